"""Task writes held back for a moment, so the checkpoint that follows them stores them in its own script.

LangGraph saves a task's writes as soon as the task ends, then, once its superstep is over, the next
checkpoint (whose state already contains those writes). A workflow step is one task per superstep, so every
step cost two Redis round trips where one does: the writes wait here up to `LINGER_SECONDS`, and the next
checkpoint of their thread takes them along (one script: both or neither). LangGraph writes a thread's
checkpoints one after another, each once the one before is stored, so while a checkpoint of the thread is
being written, or the writes' own checkpoint is not stored yet (a busy process: with hundreds of runs at once
LangGraph's checkpoints trail their supersteps by seconds), the writes wait on, up to `MAX_HOLD_SECONDS`. Past
that (a fan-out part whose siblings still run) they are stored on their own, as before.

Nothing acknowledged is lost: `aput_writes` returns only once its writes are stored, either way. A crash
while they wait loses only writes LangGraph had not been told were saved; the task then runs again on resume,
and a step's task re-attaches by its id (orchestrator.dispatch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

#: How long writes wait for their checkpoint: a superstep's end after its last task is CPU only (well under
#: this even on a loaded machine), and a write that waits this long is still stored well before a task ends.
LINGER_SECONDS: Final = 0.1
#: The longest wait, while the thread's checkpoints are still on their way.
MAX_HOLD_SECONDS: Final = 10.0

#: (thread id, checkpoint namespace, checkpoint id): the writes of one checkpoint
Key = tuple[str, str, str]


@dataclass
class Batch:
    """Held writes of one checkpoint: the put_writes script's argument triples, and who waits on them."""

    args: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def settle(self, error: BaseException | None) -> None:
        for waiter in self.waiters:
            if waiter.done():  # its aput_writes was cancelled: the writes are stored all the same
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class PendingWrites:
    """Held writes by checkpoint; `store` writes a batch on its own (the put_writes script)."""

    def __init__(
        self,
        store: Callable[[Key, list[Any]], Awaitable[None]],
        busy: Callable[[Key], bool],
        linger: float = LINGER_SECONDS,
    ):
        self._store = store
        self._busy = busy  # whether the checkpoint after these writes cannot have come yet
        self._linger = linger
        #: thread id -> its held batches: a read flushes its own thread's without scanning every run's
        self._batches: dict[str, dict[Key, Batch]] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def hold(self, key: Key, args: list[Any]) -> None:
        """Hold these writes for the checkpoint after `key`; return once they are stored."""
        loop = asyncio.get_running_loop()
        held = self._batches.get(key[0])
        if held is None:  # not setdefault: it would build a dict on every write
            held = self._batches[key[0]] = {}
        batch = held.get(key)
        if batch is None:
            batch = held[key] = Batch()
            until = loop.time() + max(MAX_HOLD_SECONDS, self._linger)
            loop.call_later(self._linger, self._expire, key, batch, until, self._linger)
        batch.args += args
        waiter: asyncio.Future[None] = loop.create_future()
        batch.waiters.append(waiter)
        await waiter

    def take(self, key: Key) -> Batch | None:
        """The held writes of checkpoint `key`, for the script that stores its successor (which settles
        the batch)."""
        held = self._batches.get(key[0])
        if held is None:
            return None
        batch = held.pop(key, None)
        if not held:
            del self._batches[key[0]]
        return batch

    async def flush(self, thread_id: str | None = None) -> None:
        """Store now every held write (of one thread): before reading or deleting it, and on close."""
        threads = list(self._batches) if thread_id is None else [thread_id]
        batches = [batch for t in threads for batch in self._batches.pop(t, {}).items()]
        await asyncio.gather(*(self._write(key, batch) for key, batch in batches))
        if thread_id is None and self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def store_alone(self, key: Key, batch: Batch) -> None:
        """Store a taken batch on its own (the checkpoint that took it failed or was cancelled)."""
        task = asyncio.ensure_future(self._write(key, batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def _expire(self, key: Key, batch: Batch, until: float, waited: float) -> None:
        if self._batches.get(key[0], {}).get(key) is not batch:
            return  # taken by a checkpoint meanwhile
        loop = asyncio.get_running_loop()
        if self._busy(key) and loop.time() < until:
            # Look again later, each time twice as late (up to a second): on a busy process hundreds of
            # runs wait here for seconds, and a look every linger was thousands of timers a second.
            again = min(waited * 2, max(self._linger, 1.0))
            loop.call_at(min(loop.time() + again, until), self._expire, key, batch, until, again)
        else:
            self.take(key)  # it is `batch`, checked above
            self.store_alone(key, batch)

    async def _write(self, key: Key, batch: Batch) -> None:
        try:
            await self._store(key, batch.args)
        except Exception as exc:  # the waiters raise it, as a direct write would
            batch.settle(exc)
        else:
            batch.settle(None)
