"""spec.shutdown Stop withdraws what no agent started: on memory, a redis-server and the 6-node cluster, with
real in-process agents. The run's tasks still queued when Stop comes (or when a run resumes under Stop) are
cancelled in the queue and never run; the claimed ones finish; the run ends Cancelled, reason Stopped, and the
withdrawn parts' step shows Cancelled as under Terminate (not Failed, not in the history). A parked run (no
graph running) and a firstSuccess fan-out are covered too."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from codeforge.api.task import TaskState
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.controller.workflow.tracker import WorkflowTracker
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowHandle, WorkflowRunner
from codeforge.orchestrator.dispatch import task_id
from codeforge.orchestrator.shutdown import STOPPED, WITHDRAWN_MESSAGE
from codeforge.queue import TaskQueue
from integration.test_orchestrator_parking import PARK_AFTER, CountingRunner
from support.backends import BACKENDS, queue_with_agents

FUNCS = "support.workflow_agents"
#: `single` runs one task at a time, so a fan-out's other parts wait queued; `idle` has no agent at all.
POOLS = [
    PoolSpec("single", "python", {"pythonFunction": f"{FUNCS}:slow"}, concurrency=1),
    PoolSpec("slow", "python", {"pythonFunction": f"{FUNCS}:slow"}, concurrency=8),
]
FAN = """
steps:
  - {name: fan, pool: single, parallel: 3, params: {seconds: 1.0}}
  - {name: after, pool: slow}
edges: [{from: fan, to: after}]
"""
IDLE = "steps: [{name: lonely, pool: idle}]"


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TaskQueue, Any]]:
    async with queue_with_agents(request, POOLS, "stopw") as pair:
        yield pair


def spec(text: str, **extra: object) -> WorkflowSpec:
    return parse_workflow_spec({**yaml.safe_load(text), **extra})


async def state_of(queue: TaskQueue, pool: str, tid: str) -> TaskState | None:
    record = await queue.get(pool, tid)
    return None if record is None else record.state


async def until(queue: TaskQueue, pool: str, tids: list[str], state: TaskState) -> str:
    """The first of `tids` seen in `state`."""
    for _ in range(500):
        for tid in tids:
            if await state_of(queue, pool, tid) is state:
                return tid
        await asyncio.sleep(0.02)
    raise AssertionError(f"none of {tids} became {state.value}")


async def assert_withdrawn(queue: TaskQueue, pool: str, tid: str) -> None:
    record = await queue.get(pool, tid)
    assert record is not None
    assert (record.state, record.error, record.run_seconds) == (TaskState.CANCELLED, WITHDRAWN_MESSAGE, None)


async def test_stop_withdraws_queued_parts_and_lets_the_claimed_one_finish(
    backend: tuple[TaskQueue, Any],
) -> None:
    queue, saver = backend
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    parts = [task_id(wf, "fan", 1, i, 0) for i in range(3)]
    events: list[ProgressEvent] = []
    control = WorkflowHandle()
    job = asyncio.ensure_future(
        WorkflowRunner(queue, saver).run(wf, spec(FAN), emit=events.append, control=control)
    )
    running = await until(queue, "single", parts, TaskState.RUNNING)  # the other two wait for the one agent
    control.stop()
    outcome = await asyncio.wait_for(job, 15)

    assert (outcome.status, outcome.reason) == ("cancelled", STOPPED)
    assert await state_of(queue, "single", running) is TaskState.SUCCEEDED  # started: it finished
    for tid in parts:
        if tid != running:
            await assert_withdrawn(queue, "single", tid)
    assert outcome.history == []  # the step never finished (as under Terminate)
    assert await queue.get("slow", task_id(wf, "after", 1, 0, 0)) is None
    finished = [e.task_id for e in events if e.kind is EventKind.TASK_FINISHED]
    assert finished == [running]  # the withdrawn tasks never ran
    assert not [e for e in events if e.kind in (EventKind.STEP_FINISHED, EventKind.ATTEMPT_FAILED)]
    # What the operator shows: the step Cancelled, as Terminate's cancelled steps (no StepFailed Event).
    tracker = WorkflowTracker(step_names=["fan", "after"], pools={"fan": "single", "after": "slow"})
    for event in events:
        tracker.apply(event)
    tracker.finish(outcome, None, None)
    steps = {s["name"]: s for s in tracker.render()["steps"]}
    assert steps["fan"]["phase"] == "Cancelled"
    assert "after" not in steps
    assert not [t for t in tracker.take_transitions() if t.reason.startswith("Step") and "Failed" in t.reason]


async def test_a_first_success_fan_out_keeps_its_winner_and_withdraws_the_rest(
    backend: tuple[TaskQueue, Any],
) -> None:
    """The withdrawn parts wait at the gate; the part that runs wins the race, which ends them as losers:
    the step succeeds and the run, needing nothing more, keeps its own outcome."""
    queue, saver = backend
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    parts = [task_id(wf, "race", 1, i, 0) for i in range(3)]
    text = "steps: [{name: race, pool: single, parallel: 3, join: firstSuccess, params: {seconds: 1.0}}]"
    control = WorkflowHandle()
    job = asyncio.ensure_future(WorkflowRunner(queue, saver).run(wf, spec(text), control=control))
    running = await until(queue, "single", parts, TaskState.RUNNING)
    control.stop()
    outcome = await asyncio.wait_for(job, 15)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.results == {"race": {"slept": True}}
    for tid in parts:
        if tid != running:
            await assert_withdrawn(queue, "single", tid)  # not "another part succeeded first": never ran


async def test_stop_reaches_a_parked_run_and_withdraws_its_task(backend: tuple[TaskQueue, Any]) -> None:
    queue, saver = backend
    runner = CountingRunner(queue, saver, park_after=PARK_AFTER)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    control = WorkflowHandle()
    job = asyncio.ensure_future(runner.run(wf, spec(IDLE), control=control))
    await asyncio.wait_for(runner.parked.wait(), 10)  # no graph runs: the runner waits on the task itself
    control.stop()
    outcome = await asyncio.wait_for(job, 10)

    assert (outcome.status, outcome.reason) == ("cancelled", STOPPED)
    await assert_withdrawn(queue, "idle", task_id(wf, "lonely", 1, 0, 0))


@pytest.mark.parametrize("withdrawn_before", [False, True], ids=["queued", "withdrawn-before-restart"])
async def test_a_run_resumed_under_stop_withdraws_what_no_agent_took(
    backend: tuple[TaskQueue, Any], withdrawn_before: bool
) -> None:
    """The operator restarts with spec.shutdown Stop set: the task it re-attaches is withdrawn if still
    queued; one the earlier operator withdrew already ends the run the same way (Stopped, not Failed)."""
    queue, saver = backend
    runner = WorkflowRunner(queue, saver)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    tid = task_id(wf, "lonely", 1, 0, 0)
    job = asyncio.ensure_future(runner.run(wf, spec(IDLE)))
    await until(queue, "idle", [tid], TaskState.QUEUED)
    job.cancel()  # the operator went away
    with pytest.raises(asyncio.CancelledError):
        await job
    if withdrawn_before:  # it had withdrawn the task just before it went
        assert await queue.cancel("idle", tid, WITHDRAWN_MESSAGE, only_if_queued=True)

    outcome = await asyncio.wait_for(runner.run(wf, spec(IDLE, shutdown="Stop")), 10)

    assert (outcome.status, outcome.reason) == ("cancelled", STOPPED), outcome.error
    assert outcome.history == []
    await assert_withdrawn(queue, "idle", tid)
