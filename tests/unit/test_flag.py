"""`orchestrator.flag.Flag`: asyncio.Event's semantics without its up-front deque."""

from __future__ import annotations

import asyncio
import sys

from codeforge.orchestrator.flag import Flag


async def test_a_set_flag_is_waited_on_at_once() -> None:
    flag = Flag()
    assert not flag.is_set()
    flag.set()
    assert flag.is_set()
    assert await asyncio.wait_for(flag.wait(), timeout=1) is True


async def test_set_wakes_every_waiter_even_when_cleared_before_they_run() -> None:
    flag = Flag()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    flag.clear()  # as asyncio.Event: the waiters were woken by the set
    assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=1) == [True, True, True]
    assert not flag.is_set()
    assert flag._waiters is None  # the list goes with the last waiter


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    flag = Flag()
    gone, stays = asyncio.ensure_future(flag.wait()), asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert gone.cancelled()
    assert flag._waiters is not None
    assert len(flag._waiters) == 1
    flag.set()
    assert await asyncio.wait_for(stays, timeout=1) is True


async def test_cleared_it_blocks_again() -> None:
    flag = Flag()
    flag.set()
    flag.clear()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, timeout=1) is True


def test_it_is_far_smaller_than_an_asyncio_event() -> None:
    flag, event = Flag(), asyncio.Event()
    event_size = sys.getsizeof(event) + sys.getsizeof(event.__dict__) + sys.getsizeof(event._waiters)
    assert sys.getsizeof(flag) * 8 < event_size
