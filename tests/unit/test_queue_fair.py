"""FairReady (the memory backend's fair-share order): the key bound, and its invariants under random use
checked against a brute-force model of the order (README, "Fair share")."""

from __future__ import annotations

import random

from codeforge.queue.base import OVERFLOW_KEY
from codeforge.queue.fair import FairReady


def test_keys_past_the_bound_share_the_overflow_key() -> None:
    fair = FairReady(max_keys=2)
    for n, key in enumerate(["a", "b", "c", "d"]):
        filed = fair.key_for(key)
        fair.add(f"{key}0", 3, n, filed, 1, 0)
    assert [fair.key_for(k) for k in ("a", "b", "c")] == ["a", "b", OVERFLOW_KEY]
    order = [fair.pop() or "-" for _ in range(4)]
    assert sorted(order) == ["a0", "b0", "c0", "d0"]  # overflow tasks are served too,
    assert order.index("c0") < order.index("d0")  # FIFO among them (one key)
    assert fair.pop() is None


def test_random_use_matches_a_brute_force_model() -> None:
    """Every pop gives the most urgent level's lowest (virtual time, key), that key's oldest task; a capped
    key is never over its cap; `claimable` counts what a claimer could get."""
    rng = random.Random(14)
    for _ in range(30):
        fair = FairReady()
        caps = {k: rng.choice([0, 1, 2]) for k in "abcd"}
        weights = {k: rng.choice([1, 1, 2, 3]) for k in "abcd"}
        ready: dict[str, tuple[int, str, int]] = {}  # id -> (priority, key, seq)
        held: dict[str, list[str]] = {k: [] for k in "abcd"}
        seq = 0
        for _step in range(300):
            op = rng.random()
            if op < 0.45:
                key, prio = rng.choice("abcd"), rng.randint(1, 4)
                seq += 1
                tid = f"{key}{seq}"
                fair.add(tid, prio, seq, key, weights[key], caps[key])
                ready[tid] = (prio, key, seq)
            elif op < 0.55 and ready:
                tid = rng.choice(sorted(ready))
                assert fair.discard(tid)
                del ready[tid]
            elif op < 0.8:
                free = {k for k in "abcd" if not caps[k] or len(held[k]) < caps[k]}
                candidates = [v for v in ready.values() if v[1] in free]
                got = fair.pop()
                if not candidates:
                    assert got is None
                    continue
                assert got is not None
                prio, key, _ = ready.pop(got)
                assert prio == min(c[0] for c in candidates)  # strict priority
                oldest = (
                    min(s for p, k, s in ready.values() if (p, k) == (prio, key))
                    if any((p, k) == (prio, key) for p, k, _ in ready.values())
                    else None
                )
                assert oldest is None or oldest > int(got[1:])  # FIFO within the key
                held[key].append(got)
                assert not caps[key] or len(held[key]) <= caps[key]
            else:
                busy = [k for k in "abcd" if held[k]]
                if busy:
                    key = rng.choice(busy)
                    held[key].pop(0)
                    fair.ended(key)
            free = {k for k in "abcd" if not caps[k] or len(held[k]) < caps[k]}
            assert fair.claimable == sum(1 for v in ready.values() if v[1] in free)
            assert len(fair) == len(ready)


def test_equal_keys_alternate_and_weights_share_in_proportion() -> None:
    fair = FairReady()
    for n in range(12):
        fair.add(f"x{n}", 3, n, "x", 2, 0)
        fair.add(f"y{n}", 3, 100 + n, "y", 1, 0)
    order = "".join((fair.pop() or "?")[0] for _ in range(12))
    assert order.count("x") == 8, order
