"""`orchestrator.checkpoint.pending.PendingWrites`: held task writes wait for their thread's next checkpoint;
a read flushes its own thread's only, and a busy thread is looked at less and less often."""

from __future__ import annotations

import asyncio
from typing import Any

from codeforge.orchestrator.checkpoint.pending import Key, PendingWrites


class Store:
    def __init__(self, busy_until: float = 0.0) -> None:
        self.stored: list[tuple[Key, list[Any]]] = []
        self.looks = 0
        self.busy_until = busy_until

    async def store(self, key: Key, args: list[Any]) -> None:
        self.stored.append((key, args))

    def busy(self, key: Key) -> bool:
        self.looks += 1
        return asyncio.get_running_loop().time() < self.busy_until


async def test_a_thread_flush_stores_only_that_threads_writes() -> None:
    store = Store()
    pending = PendingWrites(store.store, store.busy, linger=30.0)
    mine = asyncio.ensure_future(pending.hold(("t1", "", "c1"), ["w1"]))
    other = asyncio.ensure_future(pending.hold(("t2", "", "c1"), ["w2"]))
    await asyncio.sleep(0)
    await pending.flush("t1")
    await asyncio.wait_for(mine, 1)
    assert store.stored == [(("t1", "", "c1"), ["w1"])]
    assert not other.done()
    taken = pending.take(("t2", "", "c1"))  # the checkpoint after it takes the other thread's
    assert taken is not None
    assert taken.args == ["w2"]
    taken.settle(None)
    await asyncio.wait_for(other, 1)
    assert pending.take(("t2", "", "c1")) is None


async def test_writes_no_checkpoint_takes_are_stored_alone_after_the_linger() -> None:
    store = Store()
    pending = PendingWrites(store.store, store.busy, linger=0.01)
    await asyncio.wait_for(pending.hold(("t", "", "c"), ["w"]), 1)
    assert store.stored == [(("t", "", "c"), ["w"])]


async def test_a_busy_thread_is_looked_at_less_and_less_often() -> None:
    loop = asyncio.get_running_loop()
    store = Store(busy_until=loop.time() + 0.6)
    pending = PendingWrites(store.store, store.busy, linger=0.01)
    began = loop.time()
    await asyncio.wait_for(pending.hold(("t", "", "c"), ["w"]), 5)
    assert loop.time() - began >= 0.6  # held while its thread was busy, then stored alone
    assert store.stored == [(("t", "", "c"), ["w"])]
    # every 10 ms for 0.6 s would be 60 looks; doubling from 10 ms: 10, 20, 40, ..., 640 ms
    assert store.looks <= 9
