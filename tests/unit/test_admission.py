"""`orchestrator.admission.Admission`: turns for runs to start or resume, in order, given back once; and with
the runner (memory queue, in-process agents): runs waiting on what no task ends give their turn back."""

from __future__ import annotations

import asyncio

from codeforge.api.approval import Decision
from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowHandle, WorkflowRunner
from codeforge.orchestrator.admission import Admission
from codeforge.queue import open_queue

TWO_STEPS = {
    "steps": [{"name": "a", "pool": "impl"}, {"name": "b", "pool": "impl"}],
    "edges": [{"from": "a", "to": "b"}],
}


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
    assert order == []
    assert admission.busy == 2
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


async def test_runs_waiting_on_an_approval_or_suspended_give_their_turn_back_at_once() -> None:
    """One turn, held for a minute at most: a run waiting for a decision, and one suspended, must not keep
    a third from running to its end."""
    approval = parse_workflow_spec({"steps": [{"name": "gate", "kind": "approval"}]})
    plain = parse_workflow_spec(TWO_STEPS)
    admission = Admission(limit=1, hold_seconds=60)
    queue = await open_queue("memory://")
    runner = WorkflowRunner(queue, admission=admission)
    waiting, suspended = WorkflowHandle(), WorkflowHandle()
    suspended.suspend()
    async with InProcessAgents(queue, [PoolSpec("impl")]):
        gated = asyncio.ensure_future(runner.run("gated", approval, control=waiting))
        paused = asyncio.ensure_future(runner.run("paused", plain, control=suspended))
        await asyncio.sleep(0.2)
        outcome = await asyncio.wait_for(runner.run("plain", plain), 10)
        assert outcome.status == "succeeded"
        waiting.approvals.replace({"gate": Decision(True, "bob")})
        suspended.resume()
        assert (await asyncio.wait_for(gated, 10)).status == "succeeded"
        assert (await asyncio.wait_for(paused, 10)).status == "succeeded"
    await queue.close()
    assert admission.busy == 0


async def test_runs_go_on_in_turn_with_a_limit_of_one() -> None:
    """Many runs of a few steps through one turn: all end, and the turns they waited for were counted."""
    spec = parse_workflow_spec(TWO_STEPS)
    waits: list[float] = []
    admission = Admission(limit=1, hold_seconds=60, observe=waits.append)
    queue = await open_queue("memory://")
    runner = WorkflowRunner(queue, admission=admission, park_after=0.01)
    async with InProcessAgents(queue, [PoolSpec("impl")]):
        outcomes = await asyncio.wait_for(asyncio.gather(*(runner.run(f"r{i}", spec) for i in range(20))), 30)
    await queue.close()
    assert [o.status for o in outcomes] == ["succeeded"] * 20
    assert len(waits) >= 20  # a turn per start (and per resume of a parked run)
    assert any(w > 0 for w in waits)
    assert admission.busy == 0
