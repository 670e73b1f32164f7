"""A routed step's tasks are enqueued as the route is decided (`StepDispatcher.dispatch_early`), not once
LangGraph has ended the routing superstep and started the step's nodes: each node then takes its task's
enqueue over. Only what the node would dispatch at once is sent early: not while the run is suspended or
stopping, not more parts than free in-flight slots; a task no node took over is cancelled with its run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from codeforge.api.task import Priority, TaskState
from codeforge.api.workflow import Step, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowRunner
from codeforge.orchestrator.dispatch import DispatchContext, PartRequest, StepDispatcher, task_id
from codeforge.queue import TaskQueue, open_queue
from support.tasks import unique_pool

CHAIN_AND_FAN_OUT = """
steps:
  - {name: first, pool: %(pool)s}
  - {name: second, pool: %(pool)s}
  - {name: third, pool: %(pool)s, parallel: 3}
edges:
  - {from: first, to: second}
  - {from: second, to: third}
"""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[TaskQueue]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    q = await open_queue(url)
    yield q
    await q.close()


async def test_each_task_is_on_its_way_before_its_node_starts(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = unique_pool()
    seen: dict[str, bool] = {}
    run_part = StepDispatcher.run_part

    async def observed(self: StepDispatcher, req: PartRequest) -> dict[str, Any]:
        tid = task_id(self.ctx.workflow, req.step.name, req.visit, req.index, 0)
        seen[tid] = tid in self.ctx.early  # its enqueue began before this node ran
        return await run_part(self, req)

    monkeypatch.setattr(StepDispatcher, "run_part", observed)
    events: list[ProgressEvent] = []
    spec = parse_workflow_spec(yaml.safe_load(CHAIN_AND_FAN_OUT % {"pool": pool}))
    async with InProcessAgents(queue, [PoolSpec(pool, "echo", {}, concurrency=4)]):
        outcome = await WorkflowRunner(queue).run("wf-early", spec, emit=events.append)
    assert outcome.status == "succeeded", outcome.error
    assert seen == {
        "wf-early/first/v1/p0/a0": True,  # the first route comes with the run's input
        "wf-early/second/v1/p0/a0": True,
        **{f"wf-early/third/v1/p{i}/a0": True for i in range(3)},
    }
    # Each task was enqueued once, by the early dispatch; the node re-attached nothing.
    dispatched = [(e.task_id, e.status) for e in events if e.kind is EventKind.TASK_DISPATCHED]
    assert sorted(dispatched) == sorted((tid, "queued") for tid in seen)
    for tid in seen:
        outcome_of = await queue.get(pool, tid)
        assert outcome_of is not None
        assert outcome_of.state is TaskState.SUCCEEDED


def dispatcher(queue: TaskQueue, max_in_flight: int = 4) -> StepDispatcher:
    ctx = DispatchContext(
        workflow=f"wf-{unique_pool()}",
        priority=Priority.MEDIUM,
        emit=lambda _: None,
        max_in_flight=max_in_flight,
        deadline=None,
    )
    return StepDispatcher(queue, ctx)


def parts(pool: str, count: int) -> list[PartRequest]:
    step = Step.model_validate(
        {"name": "work", "pool": pool, "parallel": count} if count > 1 else {"name": "work", "pool": pool}
    )
    return [PartRequest(step, 1, i, {"i": i}, False) for i in range(count)]


async def queued(queue: TaskQueue, d: StepDispatcher, pool: str, count: int) -> list[TaskState | None]:
    states = []
    for i in range(count):
        found = await queue.get(pool, task_id(d.ctx.workflow, "work", 1, i, 0))
        states.append(None if found is None else found.state)
    return states


async def test_nothing_is_sent_early_that_the_node_would_hold_back(queue: TaskQueue) -> None:
    pool = unique_pool()
    # More parts than free in-flight slots: the nodes take the slots, so all of them wait for their nodes.
    crowded = dispatcher(queue, max_in_flight=2)
    crowded.dispatch_early(parts(pool, 3))
    assert crowded.ctx.early == {}
    # Suspended (spec.suspend, spec.budget) or stopping: the node waits at the gate before dispatching.
    suspended = dispatcher(queue)
    suspended.ctx.running.clear()
    suspended.dispatch_early(parts(pool, 1))
    stopping = dispatcher(queue)
    stopping.ctx.stop.request()
    stopping.dispatch_early(parts(pool, 1))
    await asyncio.sleep(0.05)
    for d, count in ((crowded, 3), (suspended, 1), (stopping, 1)):
        assert d.ctx.early == {}
        assert d.ctx.outstanding == {}
        assert await queued(queue, d, pool, count) == [None] * count


async def test_an_early_task_no_node_took_over_is_settled_for_the_runner_to_cancel(queue: TaskQueue) -> None:
    pool = unique_pool()
    d = dispatcher(queue)
    d.dispatch_early(parts(pool, 2))
    assert len(d.ctx.early) == 2
    await d.ctx.settle_early()  # what the runner does before cancelling a run's outstanding tasks
    assert d.ctx.early == {}
    assert sorted(d.ctx.outstanding) == sorted(task_id(d.ctx.workflow, "work", 1, i, 0) for i in range(2))
    assert await queued(queue, d, pool, 2) == [TaskState.QUEUED] * 2


async def test_a_node_takes_its_early_task_over_and_waits_for_its_result(queue: TaskQueue) -> None:
    pool = unique_pool()
    d = dispatcher(queue)
    [req] = parts(pool, 1)
    d.dispatch_early([req])
    async with InProcessAgents(queue, [PoolSpec(pool, "echo", {}, concurrency=1)]):
        record = await asyncio.wait_for(d.run_part(req), 10)
    assert record["status"] == "succeeded"
    assert record["attempts"] == 1
    assert d.ctx.early == {}
    assert d.ctx.outstanding == {}
