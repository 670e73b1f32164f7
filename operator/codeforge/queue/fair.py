"""Fair share for the memory backend, in the order `lua/lib.lua` keeps on Redis (README, "Fair share").

Strict priority across levels. Within a level, every key (a Workflow, a team, ...) with ready tasks has a
virtual time; the key with the lowest is served and its time moves on by 1/weight (start-time fair queueing:
equal weights take turns, ties by key name), FIFO within a key. A key that went idle rejoins at the later of
its own next time and the level's current one, so it banks no turns. A key holding its `max_concurrency`
leases is skipped until one ends. Heaps with lazy deletion: every operation is O(log n) amortised.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from codeforge.api.limits import MAX_FAIR_KEYS
from codeforge.queue.base import OVERFLOW_KEY

LEVELS = range(1, 5)


@dataclass
class _Key:
    fifo: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # priority -> heap of (seq, id)
    ready: dict[int, int] = field(default_factory=dict)  # priority -> ready tasks
    last: dict[int, float] = field(default_factory=dict)  # priority -> the key's next virtual time
    held: int = 0  # leases held
    cap: int = 0  # 0: none
    weight: int = 1
    blocked: bool = False

    @property
    def count(self) -> int:
        return sum(self.ready.values())


@dataclass(frozen=True, slots=True)
class _Member:
    priority: int
    key: str
    seq: int


class FairReady:
    """The ready tasks of one pool, handed out in fair-share order."""

    def __init__(self, max_keys: int = MAX_FAIR_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: dict[str, _Key] = {}
        self._members: dict[str, _Member] = {}
        #: per priority: key -> its virtual time, for keys with ready tasks at that level
        self._at: dict[int, dict[str, float]] = {p: {} for p in LEVELS}
        self._heaps: dict[int, list[tuple[float, str]]] = {p: [] for p in LEVELS}
        self._now: dict[int, float] = dict.fromkeys(LEVELS, 0.0)
        #: ready tasks of keys below their cap: what claimers can get now
        self.claimable = 0

    def __len__(self) -> int:
        return len(self._members)

    def key_for(self, key: str) -> str:
        """The key a new task files under: its own, or the shared overflow key once the pool tracks
        `max_keys` keys (so a flood of keys cannot grow the pool's state without bound)."""
        if key in self._keys or len(self._keys) < self.max_keys:
            return key
        return OVERFLOW_KEY

    def add(self, task_id: str, priority: int, seq: int, key: str, weight: int, cap: int) -> None:
        """Queue a task (`key` as `key_for` gave it); the key's cap and weight become the task's."""
        state = self._keys.setdefault(key, _Key())
        self._members[task_id] = _Member(priority, key, seq)
        heapq.heappush(state.fifo.setdefault(priority, []), (seq, task_id))
        state.ready[priority] = state.ready.get(priority, 0) + 1
        if not state.blocked:
            self.claimable += 1
        if key not in self._at[priority]:
            self._activate(priority, key, state)
        state.cap, state.weight = cap, max(weight, 1)
        self._refresh(key, state)

    def discard(self, task_id: str) -> bool:
        """Take a ready task out (cancelled); False when it was not ready."""
        member = self._members.pop(task_id, None)
        if member is None:
            return False
        state = self._keys[member.key]
        self._left(member.priority, member.key, state)
        self._refresh(member.key, state)
        return True

    def pop(self) -> str | None:
        """The next task to claim, its lease counted against its key from now on; None when none is."""
        for priority in LEVELS:
            heap, at = self._heaps[priority], self._at[priority]
            while heap:
                vt, key = heap[0]
                state = self._keys.get(key)
                if state is None or at.get(key) != vt or state.blocked:
                    heapq.heappop(heap)  # stale, or waits for a slot (re-pushed when one frees)
                    continue
                task_id = self._pop_fifo(priority, state)
                del self._members[task_id]
                self._now[priority] = vt
                nxt = vt + 1.0 / state.weight
                state.last[priority] = nxt
                self._left(priority, key, state)
                if key in at:
                    at[key] = nxt
                    heapq.heapreplace(heap, (nxt, key))
                state.held += 1
                self._refresh(key, state)
                return task_id
        return None

    def ended(self, key: str) -> bool:
        """A lease of `key` ended; True when that let the key hand out tasks again."""
        state = self._keys.get(key)
        if state is None:
            return False
        state.held = max(state.held - 1, 0)
        was = state.blocked
        self._refresh(key, state)
        return was and not state.blocked and state.count > 0

    def _pop_fifo(self, priority: int, state: _Key) -> str:
        fifo = state.fifo[priority]
        while True:
            seq, task_id = heapq.heappop(fifo)
            member = self._members.get(task_id)
            if member is not None and member.seq == seq and member.priority == priority:
                return task_id

    def _activate(self, priority: int, key: str, state: _Key) -> None:
        vt = max(state.last.get(priority, 0.0), self._now[priority])
        self._at[priority][key] = vt
        heapq.heappush(self._heaps[priority], (vt, key))

    def _left(self, priority: int, key: str, state: _Key) -> None:
        state.ready[priority] -= 1
        if not state.blocked:
            self.claimable -= 1
        if not state.ready[priority]:
            del state.ready[priority]
            state.fifo.pop(priority, None)
            self._at[priority].pop(key, None)

    def _refresh(self, key: str, state: _Key) -> None:
        blocked = state.cap > 0 and state.held >= state.cap
        if blocked != state.blocked:
            state.blocked = blocked
            self.claimable += -state.count if blocked else state.count
            if not blocked:  # its heap entries were dropped while it waited: back in line
                for priority in state.ready:
                    vt = max(self._at[priority][key], self._now[priority])
                    self._at[priority][key] = vt
                    heapq.heappush(self._heaps[priority], (vt, key))
        if state.held <= 0 and not state.ready:
            del self._keys[key]
