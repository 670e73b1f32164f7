"""`WorkflowRunner.rewind` (what the retry annotation runs): a failed run continues from its failed step, and
a run cut off by spec.timeoutSeconds from the step it was in, with a new deadline. On the memory queue and
checkpointer, and on a real redis-server (queue and checkpoints), with real in-process agents."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from codeforge.api.task import TaskState
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import RewindError, WorkflowRunner, task_id
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import TaskQueue, open_queue

pytestmark = pytest.mark.timeout(60)


@dataclass
class Setup:
    runner: WorkflowRunner
    queue: TaskQueue
    echo: str  # pool names, unique per test (the Redis server is shared)
    gate: str
    waiter: str


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    suffix = uuid.uuid4().hex[:6]
    echo, gate, waiter = f"echo-{suffix}", f"gate-{suffix}", f"waiter-{suffix}"
    pools = [
        PoolSpec(echo, "echo", {}),
        PoolSpec(gate, "python", {"pythonFunction": "support.retry_agents:fail_until_marker"}),
        PoolSpec(waiter, "python", {"pythonFunction": "support.retry_agents:slow_until_marker"}),
    ]
    url = request.getfixturevalue("redis_url") if request.param == "redis" else "memory://"
    queue = await open_queue(url)
    saver: BaseCheckpointSaver[str] = InMemorySaver() if url == "memory://" else await open_checkpointer(url)
    try:
        async with InProcessAgents(queue, pools):
            yield Setup(WorkflowRunner(queue, saver), queue, echo, gate, waiter)
    finally:
        if url != "memory://":
            await saver.aclose()  # type: ignore[attr-defined]
        await queue.close()


def spec(text: str) -> WorkflowSpec:
    return parse_workflow_spec(yaml.safe_load(text))


async def test_a_run_cut_off_by_its_timeout_is_retried_from_that_step_with_a_new_deadline(
    setup: Setup, tmp_path: Path
) -> None:
    marker, log, run_id = tmp_path / "fixed", tmp_path / "runs.log", f"late-{uuid.uuid4().hex[:6]}"
    wf = spec(
        f"""
        timeoutSeconds: 1.5
        steps:
          - {{name: plan, pool: {setup.echo}}}
          - {{name: build, pool: {setup.waiter}, params: {{marker: "{marker}", log: "{log}", seconds: 2.5}}}}
        edges: [{{from: plan, to: build}}]
        """
    )
    runner = setup.runner
    first = await runner.run(run_id, wf)
    assert first.status == "failed"
    assert first.error == "workflow timed out after 1.5s (spec.timeoutSeconds)"
    assert [h["step"] for h in first.history] == ["plan"]

    # Retried while still broken: the step runs again (a new visit, new task ids) under a deadline counted
    # from the retry, so it fails on that deadline again, not at once on the old one.
    started = time.monotonic()  # before the rewind: the new deadline counts from it
    assert await runner.rewind(run_id, wf) == "build"
    second = await runner.run(run_id, wf)
    assert second.status == "failed"
    assert second.error == first.error
    assert time.monotonic() - started >= 1.4
    retried = await setup.queue.get(setup.waiter, task_id(run_id, "build", 2, 0, 0))
    assert retried is not None
    assert retried.state in (TaskState.CANCELLED, TaskState.FAILED)  # cut off by the runner or its agent

    # Fixed, then retried: it succeeds within a fresh deadline; plan's result is kept, plan never reruns.
    marker.write_text("ok")
    assert await runner.rewind(run_id, wf) == "build"
    third = await runner.run(run_id, wf)
    assert third.status == "succeeded", third.error
    assert third.results["build"]["run"] == 3
    assert [line.split()[0] for line in log.read_text().splitlines()] == [
        task_id(run_id, "build", visit, 0, 0) for visit in (1, 2, 3)
    ]
    assert third.results["plan"]["step"] == "plan"
    assert [(h["step"], h["visit"], h["status"]) for h in third.history] == [
        ("plan", 1, "succeeded"),
        ("build", 3, "succeeded"),
    ]
    assert await setup.queue.get(setup.echo, task_id(run_id, "plan", 2, 0, 0)) is None


async def test_a_failed_step_is_retried_with_a_new_visit_and_the_earlier_results(
    setup: Setup, tmp_path: Path
) -> None:
    marker, run_id = tmp_path / "fixed", f"flaky-{uuid.uuid4().hex[:6]}"
    wf = spec(
        f"""
        steps:
          - {{name: plan, pool: {setup.echo}}}
          - {{name: build, pool: {setup.gate}, params: {{marker: "{marker}"}}}}
          - {{name: ship, pool: {setup.echo}}}
        edges: [{{from: plan, to: build}}, {{from: build, to: ship}}]
        """
    )
    runner = setup.runner
    failed = await runner.run(run_id, wf)
    assert failed.status == "failed"
    assert "marker missing" in (failed.error or "")

    marker.write_text("ok")
    assert await runner.rewind(run_id, wf) == "build"
    outcome = await runner.run(run_id, wf)
    assert outcome.status == "succeeded", outcome.error
    assert [(h["step"], h["visit"], h["status"]) for h in outcome.history] == [
        ("plan", 1, "succeeded"),
        ("build", 1, "failed"),
        ("build", 2, "succeeded"),
        ("ship", 1, "succeeded"),
    ]
    assert outcome.results["build"]["task"] == task_id(run_id, "build", 2, 0, 0)


async def test_rewind_starts_a_run_that_never_ran_and_refuses_one_without_a_failure(setup: Setup) -> None:
    wf = spec(f"steps: [{{name: only, pool: {setup.echo}}}]")
    run_id = f"ok-{uuid.uuid4().hex[:6]}"
    assert await setup.runner.rewind(run_id, wf) is None  # no checkpoint: the next run starts from the start
    assert (await setup.runner.run(run_id, wf)).status == "succeeded"
    with pytest.raises(RewindError, match=r"nothing to retry: no step failed \(the run succeeded\)"):
        await setup.runner.rewind(run_id, wf)


async def test_rewind_refuses_a_run_that_timed_out_before_its_first_step(setup: Setup) -> None:
    # No agent serves the pool: resolving the workspace's ref never ends, so the timeout cuts the run off
    # before any step (its resolve task was cancelled; there is no step to rerun).
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    wf = spec(
        f"""
        timeoutSeconds: 0.5
        workspace: {{git: {{url: "https://git.example.com/app.git", ref: main}}}}
        steps: [{{name: only, pool: {nobody}}}]
        """
    )
    run_id = f"early-{uuid.uuid4().hex[:6]}"
    outcome = await setup.runner.run(run_id, wf)
    assert outcome.error == "workflow timed out after 0.5s (spec.timeoutSeconds)"
    with pytest.raises(RewindError, match="timed out before its first step: there is no step to retry from"):
        await setup.runner.rewind(run_id, wf)
