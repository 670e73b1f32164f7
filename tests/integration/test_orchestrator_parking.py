"""Parked runs: when every running node of a run waits on a task, the runner drops the run's LangGraph loop
and waits for a task in its place, then goes on from the checkpoint (`WorkflowRunner.park_after`). On the
memory queue and on Redis (one server and a 6-node cluster), with real in-process agents: results, events,
step timeouts, retries, cancel and the workflow timeout behave as without parking; a parked run holds less."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from langgraph.checkpoint.base import BaseCheckpointSaver

from codeforge.api.task import TaskState
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowHandle, WorkflowRunner
from codeforge.queue import TaskQueue, open_queue
from support.backends import BACKENDS, queue_with_agents

FUNCS = "support.workflow_agents"
#: parks a run as soon as its nodes wait: every step below lasts longer
PARK_AFTER = 0.05


def py(pool: str, fn: str) -> PoolSpec:
    return PoolSpec(pool, "python", {"pythonFunction": f"{FUNCS}:{fn}"}, concurrency=8)


POOLS = [py("slow", "slow"), py("flaky", "slow_flaky"), py("race", "race")]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[TaskQueue, Any]]:
    """A queue with the test's agents, and a checkpointer (None: LangGraph's in-memory one)."""
    async with queue_with_agents(request, POOLS, "park") as pair:
        yield pair


def spec(text: str) -> WorkflowSpec:
    return parse_workflow_spec(yaml.safe_load(text))


class CountingRunner(WorkflowRunner):
    """Counts the runner's parks (the test must see that the run parked, else it proves nothing)."""

    def __init__(self, queue: TaskQueue, saver: BaseCheckpointSaver[Any] | None, **kw: Any) -> None:
        super().__init__(queue, saver, **kw)
        self.parks = 0
        self.parked = asyncio.Event()

    async def _parked(self, *args: Any, **kw: Any) -> bool:
        self.parks += 1
        self.parked.set()
        return await super()._parked(*args, **kw)


CHAIN = """
input: {n: 1}
steps:
  - {name: a, pool: slow, params: {seconds: 0.3}}
  - {name: fan, pool: race, parallel: 3, join: all, params: {delays: [0.2, 0.4, 0.6]}}
  - {name: c, pool: slow, params: {seconds: 0.3}}
edges: [{from: a, to: fan}, {from: fan, to: c}]
"""


async def test_a_parked_run_ends_as_an_unparked_one(backend: tuple[TaskQueue, Any]) -> None:
    queue, saver = backend
    runs: dict[str, Any] = {}
    for park_after in (PARK_AFTER, None):
        runner = CountingRunner(queue, saver, park_after=park_after)
        events: list[ProgressEvent] = []
        wf = f"wf-{uuid.uuid4().hex[:8]}"
        outcome = await runner.run(wf, spec(CHAIN), emit=events.append)
        assert outcome.status == "succeeded", outcome.error
        runs[str(park_after)] = (outcome, events, runner.parks)
    parked, plain = runs[str(PARK_AFTER)], runs["None"]
    # a, each fan part at least once, c: the run was parked while each step ran
    assert parked[2] >= 3
    assert plain[2] == 0
    assert parked[0].results == plain[0].results
    assert [h["step"] for h in parked[0].history] == ["a", "fan", "c"]
    # A step's duration counts from its dispatch, not from the node's last run (the fan's slowest part: 0.6 s)
    durations = {h["step"]: h["duration"] for h in parked[0].history}
    assert durations["a"] >= 0.3
    assert durations["fan"] >= 0.6
    assert durations["c"] >= 0.3

    def kinds(events: list[ProgressEvent]) -> Counter[tuple[str, str]]:
        return Counter((e.kind.value, e.status or "") for e in events if e.kind is not EventKind.USAGE)

    # Nodes run again after a park neither dispatch again ("reattached") nor report a task twice.
    assert kinds(parked[1]) == kinds(plain[1])
    dispatched = [e for e in parked[1] if e.kind is EventKind.TASK_DISPATCHED]
    assert len(dispatched) == 5
    assert {e.status for e in dispatched} == {"queued"}


async def test_a_step_timeout_counts_from_the_dispatch_across_parks(backend: tuple[TaskQueue, Any]) -> None:
    queue, saver = backend
    runner = CountingRunner(queue, saver, park_after=PARK_AFTER)
    text = """
input: {}
steps: [{name: a, pool: slow, timeoutSeconds: 0.6, params: {seconds: 5}}]
"""
    started = time.monotonic()
    outcome = await runner.run(f"wf-{uuid.uuid4().hex[:8]}", spec(text))
    assert outcome.status == "failed"
    assert "timed out after 0.6s" in (outcome.error or "")
    assert runner.parks >= 1
    # restarting the timeout at each park would have let it run for ever (parked every 0.05 s)
    assert time.monotonic() - started < 3.0


async def test_a_failed_attempt_is_reported_once_and_retried_while_parked(
    backend: tuple[TaskQueue, Any],
) -> None:
    queue, saver = backend
    runner = CountingRunner(queue, saver, park_after=PARK_AFTER)
    text = """
input: {}
steps:
  - {name: a, pool: slow, params: {seconds: 0.3}}
  - {name: b, pool: flaky, retries: {max: 2, backoffSeconds: 0.1}, params: {seconds: 0.4}}
edges: [{from: a, to: b}]
"""
    events: list[ProgressEvent] = []
    outcome = await runner.run(f"wf-{uuid.uuid4().hex[:8]}", spec(text), emit=events.append)
    assert outcome.status == "succeeded", outcome.error
    assert runner.parks >= 2  # in a, and in b's second attempt: its node runs again past the failed first
    failed = [e for e in events if e.kind is EventKind.ATTEMPT_FAILED]
    assert [(e.step, e.attempt) for e in failed] == [("b", 0)]
    assert outcome.history[-1]["attempts"] == 2


async def test_cancel_and_timeout_reach_a_parked_run(backend: tuple[TaskQueue, Any]) -> None:
    queue, saver = backend
    runner = CountingRunner(queue, saver, park_after=PARK_AFTER)
    text = """
input: {}
steps: [{name: a, pool: slow, params: {seconds: 3}}]
"""
    control = WorkflowHandle()
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    job = asyncio.ensure_future(runner.run(wf, spec(text), control=control))
    await asyncio.wait_for(runner.parked.wait(), 10)
    control.cancel("by the test")
    outcome = await asyncio.wait_for(job, 10)
    assert outcome.status == "cancelled"
    assert outcome.error == "cancelled: by the test"
    task = await queue.get("slow", f"{wf}/a/v1/p0/a0")
    assert task is not None
    assert task.state is TaskState.CANCELLED

    timed = spec(text + "timeoutSeconds: 0.5\n")
    started = time.monotonic()
    outcome = await runner.run(f"wf-{uuid.uuid4().hex[:8]}", timed)
    assert outcome.status == "failed"
    assert "timed out after 0.5s" in (outcome.error or "")
    assert time.monotonic() - started < 5.0


async def test_a_parked_run_holds_a_fraction_of_a_waiting_one() -> None:
    """What 50 runs waiting on their first task hold, parked and not (tracemalloc): no agent runs, so every
    run waits; parked, each holds no LangGraph loop."""
    queue = await open_queue("memory://")
    text = """
input: {n: 1}
steps: [{name: a, pool: nobody}, {name: b, pool: nobody}]
edges: [{from: a, to: b}]
"""
    held: dict[str, float] = {}
    try:
        for park_after in (None, PARK_AFTER):
            runner = WorkflowRunner(queue, park_after=park_after)
            await asyncio.sleep(0)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            jobs = [asyncio.ensure_future(runner.run(f"wf-{park_after}-{i}", spec(text))) for i in range(50)]
            await asyncio.sleep(1.0)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            held[str(park_after)] = sum(s.size_diff for s in after.compare_to(before, "filename")) / 50
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await queue.close()
    assert held[str(PARK_AFTER)] < 0.5 * held["None"], held


async def test_a_shutdown_reaches_a_parked_run_and_leaves_its_task_queued(
    backend: tuple[TaskQueue, Any],
) -> None:
    """The operator stopping cancels run(): a parked run must end at once, its task left for a restart."""
    queue, saver = backend
    runner = CountingRunner(queue, saver, park_after=PARK_AFTER)
    text = """
input: {}
steps: [{name: a, pool: slow, params: {seconds: 3}}]
"""
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    job = asyncio.ensure_future(runner.run(wf, spec(text)))
    await asyncio.wait_for(runner.parked.wait(), 10)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(job, 5)
    task = await queue.get("slow", f"{wf}/a/v1/p0/a0")
    assert task is not None
    assert not task.state.terminal  # a restart re-attaches it
    # no restart comes: end it, or the next test's agents on this server would take it up again
    await queue.cancel("slow", task.id)
