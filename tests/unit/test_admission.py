"""`orchestrator.admission.Admission`: turns for runs to start or resume, in order, given back once."""

from __future__ import annotations

import asyncio

from codeforge.orchestrator.admission import Admission


async def test_at_most_limit_turns_and_the_rest_in_the_order_asked() -> None:
    admission = Admission(limit=2, hold_seconds=60)
    first, second = await admission.enter(), await admission.enter()
    order: list[int] = []

    async def later(n: int) -> None:
        leave = await admission.enter()
        order.append(n)
        leave()

    waiting = [asyncio.ensure_future(later(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert order == [] and admission.busy == 2
    first()
    first()  # given back once: a second call does nothing
    await asyncio.sleep(0.01)
    assert order == [0, 1, 2, 3, 4]  # one turn passed from waiter to waiter, in order
    assert admission.busy == 1
    second()
    await asyncio.gather(*waiting)
    assert admission.busy == 0


async def test_a_turn_kept_too_long_is_given_back() -> None:
    admission = Admission(limit=1, hold_seconds=0.05)
    await admission.enter()  # never given back by its holder (a run waiting on an approval)
    leave = await asyncio.wait_for(admission.enter(), timeout=1)
    assert admission.busy == 1
    leave()
    assert admission.busy == 0


async def test_a_waiter_cancelled_keeps_no_turn() -> None:
    admission = Admission(limit=1, hold_seconds=60)
    leave = await admission.enter()
    gone = asyncio.ensure_future(admission.enter())
    stays = asyncio.ensure_future(admission.enter())
    await asyncio.sleep(0)
    gone.cancel()
    leave()
    second = await asyncio.wait_for(stays, timeout=1)
    assert admission.busy == 1
    second()
    assert admission.busy == 0


async def test_a_turn_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    admission = Admission(limit=1, hold_seconds=60)
    leave = await admission.enter()
    unlucky = asyncio.ensure_future(admission.enter())
    next_one = asyncio.ensure_future(admission.enter())
    await asyncio.sleep(0)
    leave()  # the turn is unlucky's now ...
    unlucky.cancel()  # ... and it is cancelled before it runs
    third = await asyncio.wait_for(next_one, timeout=1)
    assert unlucky.cancelled()
    assert admission.busy == 1
    third()
    assert admission.busy == 0


async def test_no_limit_never_waits() -> None:
    admission = Admission(limit=None)
    leaves = [await admission.enter() for _ in range(1000)]
    assert admission.busy == 0
    for leave in leaves:
        leave()
    assert admission.busy == 0
