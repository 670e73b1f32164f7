"""The TaskQueue contract, handover (README, "Handover"): on memory, a redis-server and a 6-node cluster.

A consumer blocked in a claim is handed a task by whatever makes it claimable: the lease is taken there, so
the blocked claim returns a task the consumer already holds, in the queue's order (priority, fair share,
caps), and a consumer that dies or stops waiting at that moment loses nothing and gets nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from typing import Any

import pytest

from codeforge.api.task import Priority, TaskState
from codeforge.queue import Lease, TaskQueue, open_queue
from integration import test_queue_contract as contract
from integration.test_queue_contract import PAST_SHORT_LEASE, SHORT_LEASE, claim_one
from support.tasks import make_task

# The contract suite's fixtures: every backend (memory, redis, cluster), a fresh pool per test.
queue_url = contract.queue_url
queue = contract.queue
pool = contract.pool

#: Long enough for a claim to have registered as waiting on a busy 2-core machine.
SETTLE = 0.3


async def blocked_claim(
    queue: TaskQueue, pool: str, consumer: str, max_tasks: int = 1, timeout: float = 10.0
) -> asyncio.Task[list[Lease]]:
    job = asyncio.ensure_future(queue.claim_many(pool, consumer, max_tasks, timeout=timeout))
    await asyncio.sleep(SETTLE)
    assert not job.done(), "the claim should be waiting on an empty pool"
    return job


async def test_a_waiting_consumer_holds_the_task_when_the_enqueue_returns(
    queue: TaskQueue, pool: str
) -> None:
    job = await blocked_claim(queue, pool, "c1")
    task = make_task(pool, "t1")
    await queue.enqueue(task)
    # The enqueue itself leased it: running, held by c1, before c1's claim has even returned.
    outcome = await queue.get(pool, "t1")
    assert outcome is not None
    assert (outcome.state, outcome.consumer, outcome.attempts) == (TaskState.RUNNING, "c1", 1)
    (lease,) = await asyncio.wait_for(job, 5)
    assert (lease.id, lease.consumer, lease.task.payload, lease.task.attempts) == (
        "t1",
        "c1",
        task.payload,
        1,
    )
    assert lease.expires_at > time.time()
    await queue.complete(lease, {"ok": True})
    outcome = await queue.get(pool, "t1")
    assert outcome is not None
    assert outcome.state is TaskState.SUCCEEDED


async def test_a_handover_takes_the_most_urgent_task_first(queue: TaskQueue, pool: str) -> None:
    job = await blocked_claim(queue, pool, "c1")
    await queue.enqueue_many(
        [
            make_task(pool, "low", priority=Priority.LOW),
            make_task(pool, "critical", priority=Priority.CRITICAL),
            make_task(pool, "high", priority=Priority.HIGH),
        ]
    )
    (lease,) = await asyncio.wait_for(job, 5)
    assert lease.id == "critical"
    assert [(await claim_one(queue, pool)).id for _ in range(2)] == ["high", "low"]


async def test_the_consumer_waiting_longest_is_handed_the_task(queue: TaskQueue, pool: str) -> None:
    """It is surely blocked in its pop by now; the latest to wait may still be on its way there."""
    first = await blocked_claim(queue, pool, "c1")
    second = await blocked_claim(queue, pool, "c2")
    await queue.enqueue(make_task(pool, "t1"))
    (lease,) = await asyncio.wait_for(first, 5)
    assert lease.consumer == "c1"
    await asyncio.sleep(SETTLE)
    assert not second.done()
    await queue.enqueue(make_task(pool, "t2"))
    (lease,) = await asyncio.wait_for(second, 5)
    assert (lease.id, lease.consumer) == ("t2", "c2")


async def test_a_batch_handover_keeps_the_fair_share_order(queue: TaskQueue, pool: str) -> None:
    job = await blocked_claim(queue, pool, "c1", max_tasks=4)
    await queue.enqueue_many(
        [make_task(pool, f"a/{i}", workflow="a") for i in range(3)] + [make_task(pool, "b/0", workflow="b")]
    )
    leases = await asyncio.wait_for(job, 5)
    assert [lease.id for lease in leases] == ["a/0", "b/0", "a/1", "a/2"]


async def test_a_handover_respects_a_keys_cap(queue: TaskQueue, pool: str) -> None:
    await queue.enqueue(make_task(pool, "a/0", workflow="a", max_concurrency=1))
    held = await claim_one(queue, pool, "c0")
    first = await blocked_claim(queue, pool, "c1")
    second = await blocked_claim(queue, pool, "c2")
    await queue.enqueue(make_task(pool, "a/1", workflow="a", max_concurrency=1))  # its key is at its cap
    await queue.enqueue(make_task(pool, "b/0", workflow="b"))
    done, waiting = await asyncio.wait([first, second], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [lease.id for job in done for lease in job.result()] == ["b/0"]
    await asyncio.sleep(SETTLE)
    assert len(waiting) == 1, "a/1 must not be handed over while a/0 holds the key's one slot"
    await queue.complete(held, None)  # the slot frees: a/1 goes to the consumer still waiting
    (lease,) = await asyncio.wait_for(waiting.pop(), 5)
    assert lease.id == "a/1"


async def test_a_task_handed_straight_over_takes_its_keys_turn(queue: TaskQueue, pool: str) -> None:
    # One task, a consumer waiting, nothing else ready: Redis leases it without filing it under its key
    # (lua/enqueue.lua). Its key must still have had its turn: b, new, goes before a's next task.
    job = await blocked_claim(queue, pool, "c1")
    await queue.enqueue(make_task(pool, "a/0", workflow="a"))
    (handed,) = await asyncio.wait_for(job, 5)
    assert handed.id == "a/0"
    await queue.enqueue_many(
        [make_task(pool, f"a/{i}", workflow="a") for i in (1, 2)] + [make_task(pool, "b/0", workflow="b")]
    )
    assert [(await claim_one(queue, pool)).id for _ in range(3)] == ["b/0", "a/1", "a/2"]


async def test_a_task_handed_straight_over_holds_its_keys_slot(queue: TaskQueue, pool: str) -> None:
    first = await blocked_claim(queue, pool, "c1")
    await queue.enqueue(make_task(pool, "a/0", workflow="a", max_concurrency=1))
    (held,) = await asyncio.wait_for(first, 5)
    second = await blocked_claim(queue, pool, "c2")
    await queue.enqueue(make_task(pool, "a/1", workflow="a", max_concurrency=1))  # its key is at its cap
    stats = await queue.stats(pool)
    assert (stats.in_flight, stats.queued, stats.held_back) == (1, 0, 1)
    await asyncio.sleep(SETTLE)
    assert not second.done(), "a/1 must not be handed over while a/0 holds the key's one slot"
    await queue.complete(held, None)  # the slot frees: a/1 goes to the consumer waiting
    (lease,) = await asyncio.wait_for(second, 5)
    assert lease.id == "a/1"
    await queue.complete(lease, None)
    stats = await queue.stats(pool)
    assert (stats.in_flight, stats.queued, stats.held_back) == (0, 0, 0)


async def test_a_cancelled_claim_gives_back_what_was_handed_over(queue: TaskQueue, pool: str) -> None:
    job = await blocked_claim(queue, pool, "quitter")
    job.cancel()
    await queue.enqueue(make_task(pool, "t1"))  # may reach the quitter's registration before it is gone
    started = time.monotonic()
    lease = await claim_one(queue, pool, "c2", timeout=5)
    # Back in line unstarted (not left to a 30 s lease expiry), with nothing spent.
    assert (lease.id, lease.task.attempts) == ("t1", 1)
    assert time.monotonic() - started < 3


async def test_no_task_is_lost_or_twice_when_waits_end_as_tasks_arrive(queue: TaskQueue, pool: str) -> None:
    """Consumers whose short claims time out at the moment tasks arrive: each task runs exactly once, and
    none is stranded with a consumer that stopped waiting (30 s leases: a stranded one would not finish)."""
    total = 150
    seen: list[str] = []
    stop, all_seen = asyncio.Event(), asyncio.Event()

    async def consumer(name: str) -> None:
        rng = random.Random(name)
        while not stop.is_set():
            leases = await queue.claim_many(pool, name, rng.choice([1, 2]), timeout=rng.uniform(0.001, 0.03))
            for lease in leases:
                seen.append(lease.id)
                await queue.complete(lease, None)
            if len(seen) >= total:
                all_seen.set()

    consumers = [asyncio.ensure_future(consumer(f"c{i}")) for i in range(4)]
    rng = random.Random(7)
    for i in range(total):
        await queue.enqueue(make_task(pool, f"t{i}"))
        await asyncio.sleep(rng.uniform(0.0, 0.02))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_seen.wait(), 20)
    stop.set()
    await asyncio.gather(*consumers)
    assert sorted(seen) == sorted(f"t{i}" for i in range(total)), "every task exactly once"
    stats = await queue.stats(pool)
    assert (stats.queued, stats.in_flight) == (0, 0)


# -- a real consumer process killed while it waits (Redis only: memory has no other process) --------------

_DOOMED = """
import asyncio, sys
from codeforge.queue import open_queue

async def main():
    queue = await open_queue(sys.argv[1])
    print("claiming", flush=True)
    await queue.claim(sys.argv[2], "doomed", timeout=60, lease_seconds=float(sys.argv[3]))

asyncio.run(main())
"""


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis),
                                     pytest.param("cluster", marks=pytest.mark.cluster)])  # fmt: skip
async def test_a_consumer_killed_while_waiting_loses_its_handed_task_to_the_reaper(
    request: pytest.FixtureRequest, backend: str, pool: str
) -> None:
    url = str(request.getfixturevalue("redis_url" if backend == "redis" else "cluster_url"))
    queue: Any = await open_queue(url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOOMED, url, pool, str(SHORT_LEASE), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"claiming"
        idle = queue._r  # the test reads the queue's own keys to see the registration
        deadline = time.monotonic() + 10
        while not await idle.zcard(f"cf:{{{pool}}}:idle"):
            assert time.monotonic() < deadline, "the consumer never registered as waiting"
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        await queue.enqueue(make_task(pool, "t1", lost_lease_backoff_seconds=0.05))
        outcome = await queue.get(pool, "t1")
        assert outcome is not None
        assert (outcome.state, outcome.consumer) == (TaskState.RUNNING, "doomed")  # handed to the dead one
        await asyncio.sleep(PAST_SHORT_LEASE)
        assert await queue.reap(pool) == 1
        lease = await claim_one(queue, pool, "survivor", timeout=5)
        assert (lease.id, lease.task.attempts) == ("t1", 2)
        dead = await queue.get(pool, "t1")
        assert dead is not None
        assert "lease expired" in (dead.error or "")
        await queue.complete(lease, None)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await queue.close()
