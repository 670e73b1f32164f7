"""spec.shutdown on the orchestrator (memory queue, real in-process agents): Stop lets the running steps
finish and dispatches nothing new, Terminate cancels the running tasks; a run resumed under Stop re-attaches
what it had dispatched instead of dropping it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import yaml

from codeforge.api.task import TaskState
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowHandle, WorkflowOutcome, WorkflowRunner
from codeforge.orchestrator.shutdown import STOPPED, TERMINATED
from codeforge.queue import TaskQueue, open_queue

FUNCS = "support.workflow_agents"
POOLS = [
    PoolSpec(name, "python", {"pythonFunction": f"{FUNCS}:{name}"}, concurrency=8) for name in ("slow", "tag")
]
#: A slow first step, then two quick ones.
CHAIN = """
steps:
  - {name: first, pool: slow, params: {seconds: 1.0}}
  - {name: second, pool: tag}
  - {name: third, pool: tag}
edges:
  - {from: first, to: second}
  - {from: second, to: third}
"""


@pytest.fixture
async def queue() -> AsyncIterator[TaskQueue]:
    q = await open_queue("memory://")
    async with InProcessAgents(q, POOLS):
        yield q
    await q.close()


def spec(text: str, **extra: object) -> WorkflowSpec:
    return parse_workflow_spec({**yaml.safe_load(text), **extra})


async def running(queue: TaskQueue, pool: str, tid: str) -> None:
    for _ in range(250):
        record = await queue.get(pool, tid)
        if record is not None and record.state is TaskState.RUNNING:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{tid} never ran")


async def shut_down_while_first_runs(queue: TaskQueue, run: str, mode: str) -> WorkflowOutcome:
    """Run CHAIN, and once its first task runs set spec.shutdown to `mode`; the run's outcome."""
    control = WorkflowHandle()
    job = asyncio.create_task(WorkflowRunner(queue).run(run, spec(CHAIN), control=control))
    await running(queue, "slow", f"{run}/first/v1/p0/a0")
    control.request_shutdown(spec(CHAIN, shutdown=mode).shutdown)
    return await asyncio.wait_for(job, 10)


async def test_stop_lets_the_running_step_finish_and_dispatches_nothing_new(queue: TaskQueue) -> None:
    outcome = await shut_down_while_first_runs(queue, "wf-stop", "Stop")
    assert outcome.status == "cancelled"
    assert outcome.reason == STOPPED
    assert "spec.shutdown: Stop" in (outcome.error or "")
    first = await queue.get("slow", "wf-stop/first/v1/p0/a0")
    assert first is not None
    assert first.state is TaskState.SUCCEEDED  # allowed to finish, not cancelled
    assert outcome.results == {"first": {"slept": True}}
    assert [r["step"] for r in outcome.history] == ["first"]
    assert await queue.get("tag", "wf-stop/second/v1/p0/a0") is None  # never dispatched


async def test_terminate_cancels_the_running_task(queue: TaskQueue) -> None:
    outcome = await shut_down_while_first_runs(queue, "wf-term", "Terminate")
    assert outcome.status == "cancelled"
    assert outcome.reason == TERMINATED
    record = await queue.get("slow", "wf-term/first/v1/p0/a0")
    assert record is not None
    assert record.state is TaskState.CANCELLED
    assert outcome.history == []


async def test_stop_then_terminate_escalates(queue: TaskQueue) -> None:
    control = WorkflowHandle()
    slow = spec("steps: [{name: s, pool: slow, params: {seconds: 5}}, {name: t, pool: tag}]\n"
                "edges: [{from: s, to: t}]")  # fmt: skip
    job = asyncio.create_task(WorkflowRunner(queue).run("wf-esc", slow, control=control))
    await running(queue, "slow", "wf-esc/s/v1/p0/a0")
    control.stop()
    await asyncio.sleep(0.2)
    assert not job.done()  # the running task still runs under Stop
    control.terminate()
    outcome = await asyncio.wait_for(job, 5)
    assert outcome.reason == TERMINATED
    record = await queue.get("slow", "wf-esc/s/v1/p0/a0")
    assert record is not None
    assert record.state is TaskState.CANCELLED


async def test_a_suspended_or_waiting_run_stops_at_once(queue: TaskQueue) -> None:
    gated = "steps: [{name: ok, kind: approval}, {name: t, pool: tag}]\nedges: [{from: ok, to: t}]"
    for text, extra in ((gated, {}), (CHAIN, {"suspend": True})):
        control = WorkflowHandle()
        job = asyncio.create_task(WorkflowRunner(queue).run("wf-idle", spec(text, **extra), control=control))
        await asyncio.sleep(0.2)
        assert not job.done()
        control.stop()
        outcome = await asyncio.wait_for(job, 5)
        assert (outcome.status, outcome.reason) == ("cancelled", STOPPED)


async def test_a_run_resumed_under_stop_reattaches_its_running_task(queue: TaskQueue) -> None:
    runner = WorkflowRunner(queue)
    job = asyncio.create_task(runner.run("wf-re", spec(CHAIN)))
    await running(queue, "slow", "wf-re/first/v1/p0/a0")
    job.cancel()  # the operator went away; the agent goes on with the task
    with pytest.raises(asyncio.CancelledError):
        await job
    outcome = await asyncio.wait_for(runner.run("wf-re", spec(CHAIN, shutdown="Stop")), 10)
    assert (outcome.status, outcome.reason) == ("cancelled", STOPPED)
    assert outcome.results == {"first": {"slept": True}}  # waited for and kept, not dropped
    assert await queue.get("tag", "wf-re/second/v1/p0/a0") is None


async def test_a_run_that_needs_nothing_more_keeps_its_own_outcome(queue: TaskQueue) -> None:
    control = WorkflowHandle()
    one = spec("steps: [{name: s, pool: slow, params: {seconds: 0.5}}]")
    job = asyncio.create_task(WorkflowRunner(queue).run("wf-last", one, control=control))
    await running(queue, "slow", "wf-last/s/v1/p0/a0")
    control.stop()
    outcome = await asyncio.wait_for(job, 10)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.reason is None
