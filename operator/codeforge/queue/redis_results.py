"""Result waiters of the Redis queue: woken by the pools' `done` Pub/Sub channels, not by polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.asyncio import Redis

from codeforge.api.limits import clip
from codeforge.api.task import DeadLetter, Task, TaskOutcome, TaskState, decode_result
from codeforge.queue.keys import done_channel, pool_from_channel

log = logging.getLogger(__name__)
#: Longest single wait for a message; the listener re-arms it (no busy loop).
MAX_BLOCK_SECONDS = 30.0
#: How long, and how many, tasks enqueued on a live subscription are remembered for a `wait_result` to come
#: (`ResultWatcher.expect`); past either, that wait reads the task from Redis as any other does.
EXPECT_SECONDS: Final = 60.0
EXPECT_LIMIT: Final = 100_000


def outcome_of(
    pool: str,
    task_id: str,
    state: str,
    attempts: str | None,
    result: str,
    error: str,
    consumer: str,
    *,
    finished_ms: str | None = None,
    run_ms: str | None = None,
    notified: bool = False,
) -> TaskOutcome:
    """A TaskOutcome from a task's fields as Redis stores (and publishes) them; times in ms. A result no
    codeforge agent stores (not JSON, too deep, too large: `decode_result`) makes a succeeded task failed,
    with why, rather than failing the reader (the listener serves every waiter)."""
    terminal = TaskState(state).terminal
    value, refused = decode_result(result)
    if refused is not None and state == TaskState.SUCCEEDED:
        state, error = TaskState.FAILED, refused
    return TaskOutcome(
        id=task_id,
        pool=pool,
        state=TaskState(state),
        result=value,
        error=error or None,
        attempts=int(attempts or 0),
        consumer=consumer or None,
        finished_at=int(finished_ms) / 1000.0 if terminal and finished_ms else None,
        run_seconds=int(run_ms) / 1000.0 if terminal and run_ms else None,
        notified=notified,
    )


def run_ms_of(finished: str | None, claimed: str | None, ready: str | None) -> str | None:
    """A stored task's busy time, as lib.lua's publish_done has it: claimed since it last became ready."""
    if not finished or not claimed or int(claimed) < int(ready or 0):
        return None
    return str(int(finished) - int(claimed))


def parse_done(data: str) -> tuple[str, str, str, str, str | None, str | None, str, str]:
    """A `done` message: id, state, attempts, consumer, fin_ms, run_ms, error, result. Messages of scripts
    from before fin/run were published (an older agent during a rolling upgrade) have 6 fields."""
    parts = data.split("\0", 7)
    if len(parts) == 8 and parts[4].isdigit():
        task_id, state, attempts, consumer, fin, run, error, result = parts
        return task_id, state, attempts, consumer, fin, run or None, error, result
    task_id, state, attempts, consumer, error, result = data.split("\0", 5)
    return task_id, state, attempts, consumer, None, None, error, result


def dead_letter_of(pool: str, task_id: str, reply: list[Any]) -> DeadLetter:
    """A DeadLetter from `lua/dead_letter.lua`'s reply; a torn task record still shows its error."""
    died_ms, data, attempts, error, consumer, fails, lost = reply
    try:
        task: Task | None = Task.model_validate_json(data) if data else None
    except ValueError:
        task = None
    return DeadLetter(
        id=task_id,
        pool=pool,
        state=TaskState.DEAD,
        error=error or None,
        attempts=int(attempts or 0),
        consumer=consumer or None,
        task=task,
        died_at=float(died_ms) / 1000.0,
        failures=int(fails or 0),
        lost_leases=int(lost or 0),
    )


class ResultWatcher:
    """Resolves `wait_result` futures from the pools' `done` Pub/Sub channels (one subscription per pool)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Redis]],
        fetch: Callable[[str, str], Awaitable[TaskOutcome | None]],
    ):
        self._connect = connect
        self._fetch = fetch
        self._waiters: dict[tuple[str, str], list[asyncio.Future[TaskOutcome]]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        #: (pool, task id) -> [monotonic time of its enqueue, its outcome once published]: tasks enqueued
        #: while their pool's channel was live, so their end cannot be missed (see `expect`)
        self._expected: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self._client: Redis | None = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def watch(self, pool: str, task_id: str) -> asyncio.Future[TaskOutcome]:
        future: asyncio.Future[TaskOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((pool, task_id), []).append(future)
        channel = done_channel(pool)
        confirmed = self._confirmed.get(channel)
        listener = self._listener
        if confirmed is not None and confirmed.is_set() and listener is not None and not listener.done():
            return future  # subscribed and listening (each step's wait; the lock is for setting up)
        async with self._lock:
            if self._pubsub is None:
                await self._open()
            if channel not in self._confirmed:
                self._confirmed[channel] = asyncio.Event()
                await self._pubsub.subscribe(channel)
            if self._listener is None or self._listener.done():
                self._listener = asyncio.create_task(self._listen(), name="codeforge-result-watcher")
        # Read the task only once the subscription is live, so a completion cannot slip between the two.
        await self._confirmed[channel].wait()
        return future

    def expect(self, pool: str, task_id: str) -> None:
        """Called before a task's enqueue is sent: if its pool's channel is live, every message about the
        task comes after this, so a `wait_result` that takes it (`take_expected`) need not read the task
        first (one round trip less per step). Entries nobody takes go after EXPECT_SECONDS."""
        event = self._confirmed.get(done_channel(pool))
        if event is None or not event.is_set() or isinstance(self._pubsub, _BrokenPubSub):
            return
        now = time.monotonic()
        expected = self._expected
        while expected and (
            len(expected) >= EXPECT_LIMIT or next(iter(expected.values()))[0] < now - EXPECT_SECONDS
        ):
            expected.popitem(last=False)
        expected[(pool, task_id)] = [now, None]

    def unexpect(self, pool: str, task_id: str) -> None:
        """The enqueue did not create the task (it existed: it may have ended before `expect`)."""
        self._expected.pop((pool, task_id), None)

    def take_expected(self, pool: str, task_id: str) -> tuple[bool, TaskOutcome | None]:
        """(True, its outcome or None while it runs) for a task `expect`ed and still remembered; (False,
        None) otherwise: the caller must read the task."""
        entry = self._expected.pop((pool, task_id), None)
        return (False, None) if entry is None else (True, entry[1])

    def forget(self, pool: str, task_id: str, future: asyncio.Future[TaskOutcome]) -> None:
        waiters = self._waiters.get((pool, task_id), [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._waiters.pop((pool, task_id), None)

    async def _open(self) -> None:
        self._client = await self._connect()
        self._pubsub = self._client.pubsub()

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(timeout=MAX_BLOCK_SECONDS)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection: reconnect, resubscribe, re-check every waiter
                log.warning("result channel lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._reconnect()
                continue
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "subscribe":
                event = self._confirmed.get(channel)
                if event:
                    event.set()
            elif kind == "message":
                try:
                    self._deliver(pool_from_channel(channel), message["data"])
                except Exception:  # a message no script of ours published: this listener serves every waiter
                    log.warning("ignored a malformed message on %s: %s", channel, clip(message["data"]))

    async def _reconnect(self) -> None:
        self._expected.clear()  # their messages may be lost while away: their waits read the task
        async with self._lock:
            old = self._pubsub
            self._pubsub = None
            if old is not None:
                try:
                    await old.aclose()
                except Exception:  # already broken
                    log.debug("closing the broken pubsub failed", exc_info=True)
            try:
                self._client = await self._connect()
                self._pubsub = self._client.pubsub()
                for channel in self._confirmed:
                    await self._pubsub.subscribe(channel)
            except Exception as exc:
                self._pubsub = _BrokenPubSub(exc)
                return
        # Messages published while we were away are gone: read the state of everything still awaited.
        for pool, task_id in list(self._waiters):
            try:
                outcome = await self._fetch(pool, task_id)
            except Exception:
                continue
            if outcome is not None and outcome.state.terminal:
                self._resolve(pool, task_id, outcome)

    def _deliver(self, pool: str, data: str) -> None:
        task_id, state, attempts, consumer, fin, run, error, result = parse_done(data)
        expected = self._expected.get((pool, task_id))
        if (pool, task_id) not in self._waiters and expected is None:
            return
        outcome = outcome_of(
            pool,
            task_id,
            state,
            attempts,
            result,
            error,
            consumer,
            finished_ms=fin,
            run_ms=run,
            notified=True,
        )
        if expected is not None and outcome.state.terminal:
            expected[1] = outcome  # for its wait to come
        self._resolve(pool, task_id, outcome)

    def _resolve(self, pool: str, task_id: str, outcome: TaskOutcome) -> None:
        for future in self._waiters.pop((pool, task_id), []):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._pubsub is not None and not isinstance(self._pubsub, _BrokenPubSub):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._client.aclose()


class _BrokenPubSub:
    """Stands in for a pubsub whose reconnect failed, so the listener retries."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def get_message(self, timeout: float) -> None:
        raise self.exc

    async def subscribe(self, channel: str) -> None:
        raise self.exc

    async def aclose(self) -> None:
        return None
