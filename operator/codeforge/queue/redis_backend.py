"""TaskQueue on Redis (one server or a Redis Cluster).

Every multi-key change is one Lua script (`lua/*.lua`), so it is atomic, and every key of a pool carries
the pool's hash tag, so each script runs on one cluster slot. A consumer that finds nothing to claim is
registered as idle and blocks in BLPOP on its own list; the script that makes a task claimable (an enqueue, a
freed slot, a requeue) leases it to an idle consumer and pushes the lease there, so the consumer's pop returns
a task it already holds: one round trip from enqueue to handler, no polling, no herd (README, "Handover").
Result waiters are woken by Pub/Sub (`redis_results.py`). Lost connections are retried with backoff; every
operation is safe to retry. Connecting and URLs are `codeforge.redis`'s.

Durability (`?durability=` on the URL, README "Durability"): `fast` waits for nothing; `fsync` checks at
connect that every node fsyncs each write before answering (appendfsync always); `replicated` checks that
too and sends every state-changing script with a WAIT for one replica (`redis_replicated.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from redis import exceptions as redis_errors

from codeforge.api.limits import clip, clip_text
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
    DEFAULT_RESULT_TTL_SECONDS,
    Lease,
    check_consumer,
    check_max_tasks,
    check_page,
    check_purge_ids,
    check_retention,
    claim_lease_ms,
)
from codeforge.queue.errors import (
    LeaseLostError,
    QueueUnavailableError,
    ReplicationTimeoutError,
    TaskCancelledError,
    TaskNotFoundError,
    queue_errors,
    script_refused,
)
from codeforge.queue.keys import hand_key, pool_prefix, task_key
from codeforge.queue.redis_replicated import WRITE_SCRIPTS, ReplicatedWrites, check_durability
from codeforge.queue.redis_results import (
    MAX_BLOCK_SECONDS,
    ResultWatcher,
    dead_letter_of,
    outcome_of,
    run_ms_of,
)
from codeforge.redis import TRANSIENT, Connection, Script, connect
from codeforge.redis.errors import TOPOLOGY, topology_changed

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Items per script call in batch operations, so one script never blocks Redis for long.
BATCH = 500
SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "complete",
    "heartbeat",
    "fail",
    "release",
    "cancel",
    "reap",
    "stats",
    "requeue_dead",
    "consumers",
    "dead_letter",
    "purge_dead",
    "forget",
)
#: The queue's Lua scripts (`lua/<name>.lua`, each with `lua/lib.lua` prepended).
SCRIPTS = {name: Script.from_package("codeforge.queue", name, prelude="lib") for name in SCRIPT_NAMES}


class RedisTaskQueue:
    """TaskQueue backed by Redis. Build it with `await RedisTaskQueue.connect(url)` or `open_queue(url)`."""

    def __init__(
        self,
        conn: Connection,
        *,
        retry_seconds: float = 30.0,
        result_ttl: int = DEFAULT_RESULT_TTL_SECONDS,
        durability: str = "fast",
        replica_wait: float = 1.0,
        dead_letter_retention: float = DEFAULT_DEAD_LETTER_RETENTION_SECONDS,
    ) -> None:
        self._conn = conn
        self.dead_letter_retention = check_retention(dead_letter_retention)
        # redis-py types every command as `Awaitable[T] | T` (sync and async share stubs): treat it as Any.
        self._r: Any = conn.client
        self.url = conn.url.safe
        self.cluster = conn.cluster
        self.retry_seconds = retry_seconds
        self.result_ttl = result_ttl
        self.durability = durability
        #: One WAIT's timeout; a write is re-confirmed with further WAITs for up to retry_seconds.
        self.replica_wait_ms = max(int(replica_wait * 1000), 1)
        self._replicated = ReplicatedWrites(
            conn, url=self.url, retry_seconds=retry_seconds, replica_wait_ms=self.replica_wait_ms
        )
        self._watcher = ResultWatcher(conn.any_node, self.get)
        self._withdrawals: set[asyncio.Future[None]] = set()
        #: enqueue() calls of this turn of the event loop, and the batches on their way (`_send_enqueues`)
        self._enqueues: list[tuple[Task, asyncio.Future[bool]]] = []
        self._sending: set[asyncio.Future[None]] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        retry_seconds: float = 30.0,
        result_ttl: int = DEFAULT_RESULT_TTL_SECONDS,
        durability: str | None = None,
        replica_wait: float = 1.0,
        dead_letter_retention: float = DEFAULT_DEAD_LETTER_RETENTION_SECONDS,
    ) -> RedisTaskQueue:
        check_retention(dead_letter_retention)
        with queue_errors():
            conn = await connect(url, durability=durability)
        queue = cls(
            conn,
            retry_seconds=retry_seconds,
            result_ttl=result_ttl,
            durability=conn.url.durability,
            replica_wait=replica_wait,
            dead_letter_retention=dead_letter_retention,
        )
        try:
            await check_durability(conn, queue.durability, queue.url, retry_seconds)
        except BaseException:
            await queue.close()
            raise
        return queue

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying transient failures with capped exponential backoff for retry_seconds."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.02
        while True:
            try:
                return await call()
            except ReplicationTimeoutError:
                raise  # already waited retry_seconds for a replica
            except TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise QueueUnavailableError(
                        f"Redis at {self.url} unreachable for {self.retry_seconds:g}s: {exc}"
                    ) from exc
                log.warning("redis call failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    async def _script(self, name: str, pool: str, *args: Any) -> Any:
        script = SCRIPTS[name]
        try:
            if self.durability == "replicated" and name in WRITE_SCRIPTS:
                return await self._retrying(functools.partial(self._replicated.run, script, pool, args))
            return await self._retrying(functools.partial(script.run, self._r, [pool_prefix(pool)], args))
        except redis_errors.ResponseError as exc:
            if isinstance(exc, TOPOLOGY) or topology_changed(exc):
                raise
            raise script_refused(pool, name, exc) from None

    # -- producing ---------------------------------------------------------------------------------

    def enqueue(self, task: Task) -> asyncio.Future[bool]:
        """Enqueues made in one turn of the event loop (a fan-out's parts, many runs' next steps) go out
        together, one script call per pool, at the start of the next turn. The task joins the batch at the
        call, so a caller that awaits later (an early dispatch) loses no turn."""
        loop = asyncio.get_running_loop()
        added: asyncio.Future[bool] = loop.create_future()
        if not self._enqueues:
            # The sending task's first step runs in the next turn, after every enqueue of this one. Created
            # here rather than from a call_soon callback: on a busy loop every hop is a whole turn.
            job = loop.create_task(self._send_enqueues())
            self._sending.add(job)
            job.add_done_callback(self._sending.discard)
        self._enqueues.append((task, added))
        return added

    async def _send_enqueues(self) -> None:
        """Each pool's share is sent on its own (in parallel: on a cluster, pools live on different nodes),
        so one pool's failure (its node down, a refused script) fails only its own callers."""
        batch, self._enqueues = self._enqueues, []
        by_pool: dict[str, list[tuple[Task, asyncio.Future[bool]]]] = {}
        for item in batch:
            by_pool.setdefault(item[0].pool, []).append(item)
        if len(by_pool) == 1:  # the common case, without gather's task per pool (a turn each)
            await self._enqueue_pool(batch)
        else:
            await asyncio.gather(*(self._enqueue_pool(items) for items in by_pool.values()))

    async def _enqueue_pool(self, batch: list[tuple[Task, asyncio.Future[bool]]]) -> None:
        """Sent whether or not a caller still waits: a cancelled caller may not know, as with a script
        already on its way."""
        try:
            flags = await self.enqueue_many([task for task, _ in batch])
        except BaseException as exc:
            for _, added in batch:
                if not added.done():
                    added.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, added), flag in zip(batch, flags, strict=True):
            if not added.done():
                added.set_result(flag)

    async def enqueue_many(self, tasks: Sequence[Task]) -> list[bool]:
        by_pool: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            by_pool.setdefault(task.pool, []).append(index)
        added = [False] * len(tasks)
        for pool, indexes in by_pool.items():
            for start in range(0, len(indexes), BATCH):
                chunk = indexes[start : start + BATCH]
                args: list[Any] = [len(chunk)]
                for index in chunk:
                    task = tasks[index]
                    args += [
                        task.id,
                        int(task.priority),
                        task.max_attempts,
                        int(task.lease_seconds * 1000),
                        task.stored_json(),
                        task.max_lost_leases,
                        int(task.lost_lease_backoff_seconds * 1000),
                        task.fairness_key,
                        task.fair_weight,
                        task.max_concurrency,
                    ]
                for index in chunk:
                    self._watcher.expect(pool, tasks[index].id)
                try:
                    flags = await self._script("enqueue", pool, *args)
                except BaseException:
                    for index in chunk:
                        self._watcher.unexpect(pool, tasks[index].id)
                    raise
                for index, flag in zip(chunk, flags, strict=True):
                    added[index] = bool(flag)
                    if not flag:  # it existed: it may have ended before
                        self._watcher.unexpect(pool, tasks[index].id)
        return added

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
        validate_pool_name(pool)
        check_max_tasks(max_tasks)
        check_consumer(consumer)
        lease_ms = claim_lease_ms(lease_seconds)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        member = ""  # its registration as an idle consumer, while it holds one (lua/lib.lua, hand_out)
        try:
            while True:
                wait = MAX_BLOCK_SECONDS if deadline is None else deadline - time.monotonic()
                # Nothing claimable: the script registers it as idle for as long as it will wait, so the next
                # task is leased to it where it becomes ready; past its deadline the call only takes back
                # the registration (and whatever was handed over as the wait ran out).
                idle_ms = max(int(wait * 1000), 0)
                reply = await self._script("claim", pool, consumer, max_tasks, lease_ms, idle_ms, member)
                if len(reply) > 2:
                    member = ""
                    leases = await self._leases(pool, consumer, reply)
                    if leases:
                        return leases
                    continue  # only tasks no codeforge client wrote, failed now: claim again
                if idle_ms <= 0:
                    member = ""
                    return []
                member = f"{max_tasks}|{lease_ms}|{consumer}"
                now_ms, next_due_ms = int(reply[0]), int(reply[1])
                if next_due_ms >= 0:
                    wait = min(wait, max((next_due_ms - now_ms) / 1000.0, 0.0) + 0.002)
                handed = await self._pop_handed(pool, consumer, max(wait, 0.01))
                if handed is not None:
                    member = ""  # the handover took the registration
                    leases = await self._leases(pool, consumer, [now_ms, -1, *handed.split("\0")])
                    if leases:
                        return leases
        except BaseException:
            if member:  # cancelled or failed while registered: give back what may be handed over meanwhile
                self._withdraw(pool, consumer, lease_ms, member)
            raise

    async def _pop_handed(self, pool: str, consumer: str, block: float) -> str | None:
        """Block until leases are handed over to this consumer (one message), or `block` seconds pass."""
        key = hand_key(pool, consumer)
        if self.durability != "replicated":
            item = await self._retrying(functools.partial(self._r.blpop, [key], timeout=block))
            return None if item is None else str(item[1])
        # The handover was written by another client's script: a WAIT after a write of our own on the same
        # connection confirms that a replica holds the lease before the task starts (one pipeline).
        return await self._retrying(functools.partial(self._replicated.pop, pool, key, block))

    def _withdraw(self, pool: str, consumer: str, lease_ms: int, member: str) -> None:
        """Drop an idle registration and put back, unstarted, what was handed over (in the background)."""

        async def withdraw() -> None:
            with contextlib.suppress(Exception):
                await self._script("claim", pool, consumer, 0, lease_ms, 0, member)

        job = asyncio.ensure_future(withdraw())
        self._withdrawals.add(job)
        job.add_done_callback(self._withdrawals.discard)

    async def _leases(self, pool: str, consumer: str, reply: list[Any]) -> list[Lease]:
        leases = []
        for i in range(2, len(reply) - 5, 6):
            # Validated again (any client of the pool may have written it), by pydantic's own JSON parser:
            # about 40 % less CPU per delivery than json.loads then model_validate; the queue's count of
            # deliveries replaces the stored one as it is read (`Task._queue_count`).
            try:
                task = Task.model_validate_json(reply[i + 1], context={"attempts": int(reply[i + 2])})
            except ValueError as exc:  # ValidationError: a record no codeforge client wrote
                await self._fail_unreadable(pool, str(reply[i]), str(reply[i + 3]), exc)
                continue
            leases.append(
                Lease(
                    task=task,
                    fence=int(reply[i + 3]),
                    consumer=consumer,
                    expires_at=int(reply[i + 4]) / 1000.0,
                    queued_seconds=int(reply[i + 5]) / 1000.0,
                )
            )
        return leases

    async def _fail_unreadable(self, pool: str, task_id: str, fence: str, exc: ValueError) -> None:
        """Fail, not retried, a claimed task whose record is no valid Task: raising would lose every lease of
        the claim and deliver the record again and again until its lease budget ran out."""
        why = clip_text(" ".join(str(exc).split()), 300)
        error = f"the task's record is not a valid codeforge task (a client not codeforge's wrote it): {why}"
        log.warning("pool %s: failed task %s at its claim: %s", pool, clip(task_id), why)
        with contextlib.suppress(Exception):  # its lease runs out, and the reaper takes it, as any lease's
            await self._script("fail", pool, task_id, fence, error, 0, 0, self.result_ttl)

    @staticmethod
    def _refusal(code: str, lease: Lease) -> LeaseLostError:
        if code == "cancelled":
            return TaskCancelledError(f"task {lease.id!r} of pool {lease.pool!r} was cancelled")
        if code == "gone":
            return LeaseLostError(f"task {lease.id!r} of pool {lease.pool!r} no longer exists")
        return LeaseLostError(
            f"lease on task {lease.id!r} (fence {lease.fence}) is stale: it expired or another consumer "
            "claimed the task; nothing was recorded"
        )

    async def heartbeat(self, lease: Lease) -> Lease:
        reply = await self._script("heartbeat", lease.pool, lease.id, lease.fence)
        if reply[0] != "ok":
            raise self._refusal(reply[0], lease)
        return replace(lease, expires_at=int(reply[1]) / 1000.0)

    async def complete(self, lease: Lease, result: Any = None) -> None:
        refusal = (await self.complete_many([(lease, result)]))[0]
        if refusal is not None:
            raise refusal

    async def complete_many(self, items: Sequence[tuple[Lease, Any]]) -> list[LeaseLostError | None]:
        out: list[LeaseLostError | None] = []
        by_pool: dict[str, list[tuple[Lease, Any]]] = {}
        for item in items:
            by_pool.setdefault(item[0].pool, []).append(item)
        refusals: dict[tuple[str, str, int], LeaseLostError | None] = {}
        for pool, pool_items in by_pool.items():
            for start in range(0, len(pool_items), BATCH):
                chunk = pool_items[start : start + BATCH]
                args: list[Any] = [self.result_ttl, len(chunk)]
                for lease, result in chunk:
                    args += [lease.id, lease.fence, encode_result(result)]
                codes = await self._script("complete", pool, *args)
                for (lease, _), code in zip(chunk, codes, strict=True):
                    refusals[(pool, lease.id, lease.fence)] = (
                        None if code == "ok" else self._refusal(code, lease)
                    )
        for lease, _ in items:
            out.append(refusals[(lease.pool, lease.id, lease.fence)])
        return out

    async def fail(
        self, lease: Lease, error: str, *, retryable: bool = True, retry_delay: float = 0.0
    ) -> TaskState:
        error = (error or "failed").replace("\0", " ")[:8192]
        reply = await self._script(
            "fail", lease.pool, lease.id, lease.fence, error, 1 if retryable else 0,
            int(max(retry_delay, 0.0) * 1000), self.result_ttl,
        )  # fmt: skip
        if reply.startswith("refused:"):
            raise self._refusal(reply.removeprefix("refused:"), lease)
        return TaskState(reply)

    async def release(self, lease: Lease, *, started: bool = False, reason: str = "") -> TaskState:
        reason = (reason or "interrupted").replace("\0", " ")[:8192]
        reply = await self._script("release", lease.pool, lease.id, lease.fence, 1 if started else 0, reason)
        if reply not in ("queued", "dead"):
            raise self._refusal(reply, lease)
        return TaskState(reply)

    async def cancel(
        self, pool: str, task_id: str, reason: str = "cancelled", *, only_if_queued: bool = False
    ) -> bool:
        validate_pool_name(pool)
        reason = (reason or "cancelled").replace("\0", " ")
        only = 1 if only_if_queued else 0
        return bool(await self._script("cancel", pool, task_id, reason, self.result_ttl, only))

    # -- reading -----------------------------------------------------------------------------------

    async def get(self, pool: str, task_id: str) -> TaskOutcome | None:
        validate_pool_name(pool)
        key = task_key(pool, task_id)
        fields = ["state", "attempts", "result", "error", "consumer", "fin", "clm", "rdy"]
        state, attempts, result, error, consumer, fin, claimed, ready = await self._retrying(
            lambda: self._r.hmget(key, fields)
        )
        if state is None:
            return None
        run = run_ms_of(fin, claimed, ready)
        return outcome_of(
            pool, task_id, state, attempts, result, error, consumer, finished_ms=fin, run_ms=run
        )

    async def wait_result(self, pool: str, task_id: str, timeout: float | None = None) -> TaskOutcome:
        validate_pool_name(pool)
        future = await self._retrying(lambda: self._watcher.watch(pool, task_id))
        try:
            # A task this queue enqueued on a live subscription cannot have ended unseen: no read needed.
            expected, outcome = self._watcher.take_expected(pool, task_id)
            if not expected:
                outcome = await self.get(pool, task_id)
                if outcome is None:
                    raise TaskNotFoundError(f"no task {task_id!r} in pool {pool!r}")
            if outcome is not None and outcome.state.terminal:
                return outcome
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"task {task_id!r} of pool {pool!r} did not finish within {timeout}s"
                ) from None
        finally:
            self._watcher.forget(pool, task_id, future)

    async def stats(self, pool: str) -> QueueStats:
        validate_pool_name(pool)
        ready, delayed, in_flight, dead, age_ms, expired, held = await self._script("stats", pool)
        held_back = min(max(int(held), 0), int(ready))
        return QueueStats(
            pool=pool,
            queued=int(ready) - held_back,
            held_back=held_back,
            delayed=int(delayed),
            in_flight=int(in_flight),
            dead=int(dead),
            oldest_age_seconds=max(int(age_ms), 0) / 1000.0,
            dead_expired=int(expired),
        )

    async def dead_letters(self, pool: str, limit: int = 100) -> list[DeadLetter]:
        validate_pool_name(pool)
        check_page(limit)
        ids = await self._retrying(lambda: self._r.zrange(pool_prefix(pool) + "dead", 0, limit - 1))
        letters = [await self.dead_letter(pool, task_id) for task_id in ids]
        return [letter for letter in letters if letter is not None]

    async def dead_letter(self, pool: str, task_id: str) -> DeadLetter | None:
        validate_pool_name(pool)
        reply = await self._script("dead_letter", pool, task_id)
        if not reply:
            return None
        return dead_letter_of(pool, task_id, reply)

    async def purge_dead(self, pool: str, task_ids: Sequence[str]) -> int:
        return await self._removing("purge_dead", pool, task_ids)

    async def forget(self, pool: str, task_ids: Sequence[str]) -> int:
        return await self._removing("forget", pool, task_ids)

    async def _removing(self, script: str, pool: str, task_ids: Sequence[str]) -> int:
        """A script that removes some of the ids it is given, in batches; how many went in all."""
        validate_pool_name(pool)
        ids = check_purge_ids(task_ids)
        removed = 0
        for start in range(0, len(ids), BATCH):
            removed += int(await self._script(script, pool, *ids[start : start + BATCH]))
        return removed

    async def requeue_dead(self, pool: str, task_id: str) -> bool:
        validate_pool_name(pool)
        return bool(await self._script("requeue_dead", pool, task_id))

    async def reap(self, pool: str) -> int:
        validate_pool_name(pool)
        return int(await self._script("reap", pool, int(self.dead_letter_retention * 1000)))

    async def set_consumer_state(self, pool: str, consumer: str, state: str, ttl: float) -> None:
        validate_pool_name(pool)
        if not consumer or "|" in state:
            raise ValueError("consumer must be non-empty and state must not contain '|'")
        await self._script("consumers", pool, consumer, state, int(ttl * 1000))

    async def consumer_states(self, pool: str) -> dict[str, str]:
        validate_pool_name(pool)
        flat = await self._script("consumers", pool, "", "", 0)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except TRANSIENT as exc:
            raise QueueUnavailableError(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._withdrawals:
            await asyncio.wait(self._withdrawals, timeout=2.0)
        if self._sending:
            await asyncio.wait(self._sending, timeout=2.0)
        await self._watcher.close()
        await self._replicated.close()
        await self._r.aclose()
