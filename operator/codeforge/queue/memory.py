"""In-process TaskQueue: the embedded mode's queue (`codeforge run`) and the reference for the contract.

One asyncio event loop owns it. Idle claimers wait on futures; whatever makes a task claimable leases it to
the longest-waiting claimer right away and resolves its future with the leases (a handover, as on Redis:
one waiter per task, no herd, the task already held when the claimer resumes); timers for leases and retry
backoffs bound the wait precisely, so there is no polling.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from codeforge.api.task import (
    DeadLetter,
    QueueStats,
    Task,
    TaskOutcome,
    TaskState,
    encode_result,
    validate_pool_name,
)
from codeforge.queue.base import (
    DEFAULT_DEAD_LETTER_RETENTION_SECONDS,
    Lease,
    check_max_tasks,
    check_page,
    check_purge_ids,
    check_retention,
    claim_lease_ms,
    handler_budget_spent,
    lost_lease_backoff,
    lost_lease_budget_spent,
)
from codeforge.queue.errors import LeaseLostError, TaskCancelledError, TaskNotFoundError
from codeforge.queue.fair import FairReady

#: What `forget` removes: tasks that ended and are not dead letters.
_FORGETTABLE = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass
class _Record:
    task: Task
    seq: int
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    failures: int = 0  # retryable handler failures: the handler's budget (max_attempts)
    lost: int = 0  # lost leases: the lost-lease budget (max_lost_leases)
    fence: int = 0
    hold: float = 0.0  # this claim's lease length
    consumer: str = ""
    expires_at: float = 0.0
    ready_at: float = 0.0
    #: For the metrics (as lib.lua's rdy, clm, fin): when it last became claimable, was last claimed, ended.
    ready_since: float = field(default_factory=time.time)
    claimed_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    fair_key: str = ""  # the key it is filed under (its own, or the overflow key)
    holds_slot: bool = False  # its lease counts against its key's max_concurrency

    died_at: float = 0.0

    def dead_letter(self) -> DeadLetter:
        return DeadLetter(
            **self.outcome().model_dump(),
            task=self.task,
            died_at=self.died_at,
            failures=self.failures,
            lost_leases=self.lost,
        )

    def outcome(self, *, notified: bool = False) -> TaskOutcome:
        finished = self.finished_at if self.state.terminal else None
        run = None
        if finished is not None and self.claimed_at is not None and self.claimed_at >= self.ready_since:
            run = finished - self.claimed_at  # claimed since it last became ready: an agent held it
        return TaskOutcome(
            id=self.task.id,
            pool=self.task.pool,
            state=self.state,
            result=self.result,
            error=self.error,
            attempts=self.attempts,
            consumer=self.consumer or None,
            finished_at=finished,
            run_seconds=run,
            notified=notified,
        )


@dataclass(frozen=True, slots=True)
class _Claimer:
    """A consumer blocked in a claim: what it asked for, and the future its leases are handed over on."""

    future: asyncio.Future[list[Lease]]
    consumer: str
    max_tasks: int
    hold: float


@dataclass
class _Pool:
    records: dict[str, _Record] = field(default_factory=dict)
    ready: FairReady = field(default_factory=FairReady)
    delayed: list[tuple[float, str]] = field(default_factory=list)  # (ready_at, id), lazily pruned
    in_flight: dict[str, _Record] = field(default_factory=dict)
    dead: dict[str, _Record] = field(default_factory=dict)  # insertion order = dead-letter order
    claimers: deque[_Claimer] = field(default_factory=deque)
    watchers: dict[str, list[asyncio.Future[TaskOutcome]]] = field(default_factory=dict)
    consumers: dict[str, tuple[str, float]] = field(default_factory=dict)
    dead_expired: int = 0


class MemoryTaskQueue:
    """TaskQueue kept in this process's memory; nothing survives the process."""

    def __init__(self, *, dead_letter_retention: float = DEFAULT_DEAD_LETTER_RETENTION_SECONDS) -> None:
        self.dead_letter_retention = check_retention(dead_letter_retention)
        self._pools: dict[str, _Pool] = {}
        self._seq = itertools.count(1)
        self._closed = False

    def _pool(self, name: str) -> _Pool:
        pool = self._pools.get(name)
        if pool is None:
            validate_pool_name(name)
            pool = self._pools[name] = _Pool()
        return pool

    # -- producing ---------------------------------------------------------------------------------

    async def enqueue(self, task: Task) -> bool:
        return (await self.enqueue_many([task]))[0]

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        added: list[bool] = []
        touched: dict[str, _Pool] = {}
        for task in tasks:
            pool = self._pool(task.pool)
            if task.id in pool.records:
                added.append(False)
                continue
            record = _Record(task=task, seq=next(self._seq), attempts=task.attempts)
            record.fair_key = pool.ready.key_for(task.fairness_key)
            pool.records[task.id] = record
            self._make_ready(pool, record, hand_out=False)
            touched[task.pool] = pool
            added.append(True)
        for pool in touched.values():  # all of a call at once, as on Redis: the most urgent goes first
            self._hand_out(pool)
        return added

    def _make_ready(
        self, pool: _Pool, record: _Record, since: float | None = None, *, hand_out: bool = True
    ) -> None:
        record.state = TaskState.QUEUED
        record.consumer = ""
        record.ready_at = 0.0
        record.ready_since = time.time() if since is None else since
        record.claimed_at = None  # an earlier claim was not a run of this readiness
        task = record.task
        pool.ready.add(task.id, int(task.priority), record.seq, record.fair_key, task.fair_weight,
                       task.max_concurrency)  # fmt: skip
        if hand_out and pool.ready.claimable:
            self._hand_out(pool)

    def _end_lease(self, pool: _Pool, record: _Record) -> None:
        """Every way a lease ends (complete, fail, release, cancel, expiry) frees its key's slot."""
        pool.in_flight.pop(record.task.id, None)
        if record.holds_slot:
            record.holds_slot = False
            if pool.ready.ended(record.fair_key):
                self._hand_out(pool)

    def _hand_out(self, pool: _Pool) -> None:
        """Lease claimable tasks to blocked claimers, longest waiting first, in the queue's order."""
        while pool.claimers and pool.ready.claimable:
            claimer = pool.claimers.popleft()
            if not claimer.future.done():
                claimer.future.set_result(
                    self._take(pool, claimer.consumer, claimer.max_tasks, claimer.hold, hand_out=False)
                )

    @staticmethod
    def _wake_one(pool: _Pool) -> None:
        """Wake one claimer with nothing, so it re-arms its timer (a retry became due sooner)."""
        while pool.claimers:
            claimer = pool.claimers.popleft()
            if not claimer.future.done():
                claimer.future.set_result([])
                return

    # -- consuming ---------------------------------------------------------------------------------

    async def claim(
        self, pool: str, consumer: str, timeout: float | None = 0.0, *, lease_seconds: float | None = None
    ) -> Lease | None:
        leases = await self.claim_many(pool, consumer, 1, timeout, lease_seconds=lease_seconds)
        return leases[0] if leases else None

    async def claim_many(
        self,
        pool: str,
        consumer: str,
        max_tasks: int,
        timeout: float | None = 0.0,
        *,
        lease_seconds: float | None = None,
    ) -> list[Lease]:
        check_max_tasks(max_tasks)
        hold = claim_lease_ms(lease_seconds) / 1000.0
        state = self._pool(pool)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            leases = self._take(state, consumer, max_tasks, hold)
            if leases or self._closed:
                return leases
            wait = self._next_timer(state)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = remaining if wait is None else min(wait, remaining)
            waiter: asyncio.Future[list[Lease]] = asyncio.get_running_loop().create_future()
            state.claimers.append(_Claimer(waiter, consumer, max_tasks, hold))
            try:
                await asyncio.wait_for(asyncio.shield(waiter), wait)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over as the claim was cancelled
                    for lease in waiter.result():
                        await self.release(lease)  # back in line, nothing spent
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
            if not waiter.cancelled() and waiter.result():
                return waiter.result()  # handed over while it waited (or just as its wait ran out)

    def _take(
        self, pool: _Pool, consumer: str, max_tasks: int, hold: float, *, hand_out: bool = True
    ) -> list[Lease]:
        now = time.time()
        self._expire(pool, now)
        self._promote(pool, now)
        leases: list[Lease] = []
        while len(leases) < max_tasks:
            task_id = pool.ready.pop()
            if task_id is None:
                break
            record = pool.records[task_id]
            record.holds_slot = True
            record.state = TaskState.RUNNING
            record.attempts += 1
            record.fence += 1
            record.consumer = consumer
            record.hold = hold or record.task.lease_seconds
            record.expires_at = now + record.hold
            record.claimed_at = now
            pool.in_flight[task_id] = record
            leases.append(self._lease(record))
        if hand_out and pool.ready.claimable:
            self._hand_out(pool)  # an expiry or a due retry readied more than this claimer took
        return leases

    @staticmethod
    def _lease(record: _Record) -> Lease:
        task = record.task.model_copy(update={"attempts": record.attempts})
        return Lease(
            task=task,
            fence=record.fence,
            consumer=record.consumer,
            expires_at=record.expires_at,
            queued_seconds=max((record.claimed_at or 0.0) - record.ready_since, 0.0),
        )

    def _next_timer(self, pool: _Pool) -> float | None:
        """Seconds until the next lease expiry or retry becomes due, so a waiter wakes exactly then."""
        times = [r.expires_at for r in pool.in_flight.values()]
        times += [ready_at for ready_at, _ in pool.delayed[:1]]
        if not times:
            return None
        return max(min(times) - time.time(), 0.001)

    def _promote(self, pool: _Pool, now: float) -> None:
        while pool.delayed and pool.delayed[0][0] <= now:
            ready_at, task_id = heapq.heappop(pool.delayed)
            record = pool.records.get(task_id)
            if record and record.state is TaskState.QUEUED and record.ready_at == ready_at:
                self._make_ready(pool, record, since=ready_at)  # claimable since it was due

    def _expire(self, pool: _Pool, now: float) -> int:
        expired = [r for r in pool.in_flight.values() if r.expires_at <= now]
        for record in expired:
            self._end_lease(pool, record)
            record.fence += 1  # the old holder's token is stale from now on
            error = f"lease expired after {record.hold:g}s without a heartbeat (delivery {record.attempts})"
            self._lose_lease(pool, record, error, backoff=True)
        return len(expired)

    def _bury(self, pool: _Pool, record: _Record, error: str) -> TaskState:
        record.state = TaskState.DEAD
        record.error = error
        record.died_at = time.time()
        pool.dead[record.task.id] = record
        self._settle(pool, record)
        return TaskState.DEAD

    def _retry_or_bury(self, pool: _Pool, record: _Record, error: str, delay: float) -> TaskState:
        """A retryable handler failure spends one of the handler's `max_attempts` runs."""
        record.failures += 1
        allowed = record.task.max_attempts
        if record.failures >= allowed:
            return self._bury(pool, record, handler_budget_spent(error, record.failures, allowed))
        return self._requeue(pool, record, error, delay)

    def _lose_lease(self, pool: _Pool, record: _Record, error: str, *, backoff: bool) -> TaskState:
        """A lost lease spends the lost-lease budget, never the handler's; redelivery waits a backoff."""
        record.lost += 1
        allowed = record.task.max_lost_leases
        if record.lost >= allowed:
            return self._bury(pool, record, lost_lease_budget_spent(error, record.lost, allowed))
        delay = lost_lease_backoff(record.task.lost_lease_backoff_seconds, record.lost) if backoff else 0.0
        return self._requeue(pool, record, error, delay)

    def _requeue(self, pool: _Pool, record: _Record, error: str, delay: float) -> TaskState:
        record.error = error
        if delay > 0:
            record.state = TaskState.QUEUED
            record.ready_at = record.ready_since = time.time() + delay
            record.claimed_at = None
            heapq.heappush(pool.delayed, (record.ready_at, record.task.id))
            self._wake_one(pool)  # so a waiting claimer re-arms its timer for the due time
        else:
            self._make_ready(pool, record)
        return TaskState.QUEUED

    def _held(self, lease: Lease) -> tuple[_Pool, _Record]:
        pool = self._pool(lease.pool)
        record = pool.records.get(lease.id)
        if record is None:
            raise LeaseLostError(f"task {lease.id!r} of pool {lease.pool!r} no longer exists")
        self._expire(pool, time.time())
        if record.state is TaskState.CANCELLED:
            raise TaskCancelledError(f"task {lease.id!r} was cancelled: {record.error}")
        if record.state is not TaskState.RUNNING or record.fence != lease.fence:
            raise LeaseLostError(
                f"lease on task {lease.id!r} is stale (fence {lease.fence}, current {record.fence}, "
                f"state {record.state.value}): another consumer owns it now"
            )
        return pool, record

    async def heartbeat(self, lease: Lease) -> Lease:
        _, record = self._held(lease)
        record.expires_at = time.time() + record.hold
        return replace(lease, expires_at=record.expires_at)

    async def complete(self, lease: Lease, result: Any = None) -> None:
        done = self._pool(lease.pool).records.get(lease.id)
        if done and done.state is TaskState.SUCCEEDED and done.fence == lease.fence and done.result == result:
            return  # the same call again (a retry): already recorded, not a second recording
        encode_result(result)  # the Redis backend's bounds (JSON, depth, size), with its message
        pool, record = self._held(lease)
        self._end_lease(pool, record)
        record.state = TaskState.SUCCEEDED
        record.result = result
        record.error = None
        self._settle(pool, record)

    async def complete_many(self, items: Sequence[tuple[Lease, Any]]) -> list[LeaseLostError | None]:
        refusals: list[LeaseLostError | None] = []
        for lease, result in items:
            try:
                await self.complete(lease, result)
                refusals.append(None)
            except LeaseLostError as exc:
                refusals.append(exc)
        return refusals

    async def fail(
        self, lease: Lease, error: str, *, retryable: bool = True, retry_delay: float = 0.0
    ) -> TaskState:
        pool, record = self._held(lease)
        self._end_lease(pool, record)
        if not retryable:
            record.state = TaskState.FAILED
            record.error = error
            self._settle(pool, record)
            return TaskState.FAILED
        return self._retry_or_bury(pool, record, error, retry_delay)

    async def release(self, lease: Lease, *, started: bool = False, reason: str = "") -> TaskState:
        pool, record = self._held(lease)
        self._end_lease(pool, record)
        record.fence += 1
        if started:
            return self._lose_lease(pool, record, reason or "interrupted", backoff=False)
        record.attempts -= 1
        self._make_ready(pool, record)
        return TaskState.QUEUED

    async def cancel(
        self, pool: str, task_id: str, reason: str = "cancelled", *, only_if_queued: bool = False
    ) -> bool:
        state = self._pool(pool)
        record = state.records.get(task_id)
        if record is None or record.state.terminal:
            return False
        if only_if_queued and record.state is not TaskState.QUEUED:
            return False  # a consumer holds it (a handover too resolved its claimer with the lease)
        if record.state is TaskState.QUEUED:
            state.ready.discard(task_id)
        self._end_lease(state, record)
        record.state = TaskState.CANCELLED
        record.error = reason
        self._settle(state, record)
        return True

    def _settle(self, pool: _Pool, record: _Record) -> None:
        record.finished_at = time.time()
        for waiter in pool.watchers.pop(record.task.id, []):
            if not waiter.done():
                waiter.set_result(record.outcome(notified=True))

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, pool: str, task_id: str) -> TaskOutcome | None:
        record = self._pool(pool).records.get(task_id)
        return record.outcome() if record else None

    async def wait_result(self, pool: str, task_id: str, timeout: float | None = None) -> TaskOutcome:
        state = self._pool(pool)
        record = state.records.get(task_id)
        if record is None:
            raise TaskNotFoundError(f"no task {task_id!r} in pool {pool!r}")
        if record.state.terminal:
            return record.outcome()
        waiter: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        state.watchers.setdefault(task_id, []).append(waiter)
        # Expiries are applied lazily: while somebody waits, wake at each due time to apply them.
        remaining = timeout
        while True:
            wait = self._next_timer(state)
            step = wait if remaining is None else (remaining if wait is None else min(wait, remaining))
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), step)
            except TimeoutError:
                if remaining is not None:
                    remaining -= step or 0.0
                    if remaining <= 0:
                        waiter.cancel()
                        raise TimeoutError(f"task {task_id!r} of pool {pool!r} is not done") from None
                self._expire(state, time.time())
                self._promote(state, time.time())

    async def stats(self, pool: str) -> QueueStats:
        state = self._pool(pool)
        now = time.time()
        self._expire(state, now)
        self._promote(state, now)
        queued = [r for r in state.records.values() if r.state is TaskState.QUEUED]
        ready = [r for r in queued if not r.ready_at]
        oldest = min((r.ready_since for r in ready), default=now)  # waiting since it last became ready
        held_back = max(len(ready) - state.ready.claimable, 0)  # their keys hold maxConcurrency leases
        return QueueStats(
            pool=pool,
            queued=len(ready) - held_back,
            held_back=held_back,
            delayed=len(queued) - len(ready),
            in_flight=len(state.in_flight),
            dead=len(state.dead),
            oldest_age_seconds=max(now - oldest, 0.0),
            dead_expired=state.dead_expired,
        )

    async def dead_letters(self, pool: str, limit: int = 100) -> list[DeadLetter]:
        check_page(limit)
        return [r.dead_letter() for r in list(self._pool(pool).dead.values())[:limit]]

    async def dead_letter(self, pool: str, task_id: str) -> DeadLetter | None:
        record = self._pool(pool).dead.get(task_id)
        return record.dead_letter() if record else None

    async def purge_dead(self, pool: str, task_ids: Sequence[str]) -> int:
        state = self._pool(pool)
        removed = 0
        for task_id in check_purge_ids(task_ids):
            if state.dead.pop(task_id, None) is not None:
                del state.records[task_id]
                removed += 1
        return removed

    async def forget(self, pool: str, task_ids: Sequence[str]) -> int:
        state = self._pool(pool)
        removed = 0
        for task_id in check_purge_ids(task_ids):
            record = state.records.get(task_id)
            if record is not None and record.state in _FORGETTABLE:
                del state.records[task_id]
                removed += 1
        return removed

    def _expire_dead(self, pool: _Pool, now: float) -> None:
        """Dead letters older than the retention go (insertion order is death order: oldest first)."""
        if not self.dead_letter_retention:
            return
        cutoff = now - self.dead_letter_retention
        while pool.dead:
            task_id, record = next(iter(pool.dead.items()))
            if record.died_at > cutoff:
                return
            del pool.dead[task_id]
            del pool.records[task_id]
            pool.dead_expired += 1

    async def requeue_dead(self, pool: str, task_id: str) -> bool:
        state = self._pool(pool)
        record = state.dead.pop(task_id, None)
        if record is None:
            return False
        record.attempts = record.failures = record.lost = 0
        record.error = None
        self._make_ready(state, record)
        return True

    async def reap(self, pool: str) -> int:
        state = self._pool(pool)
        count = self._expire(state, time.time())
        self._promote(state, time.time())
        self._expire_dead(state, time.time())
        return count

    async def set_consumer_state(self, pool: str, consumer: str, state: str, ttl: float) -> None:
        self._pool(pool).consumers[consumer] = (state, time.time() + ttl)

    async def consumer_states(self, pool: str) -> dict[str, str]:
        now = time.time()
        return {c: s for c, (s, until) in self._pool(pool).consumers.items() if until > now}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            while pool.claimers:
                claimer = pool.claimers.popleft()
                if not claimer.future.done():
                    claimer.future.set_result([])
