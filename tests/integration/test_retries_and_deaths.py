"""Retries and agent deaths (README, "Retries and agent deaths"), end to end with real agents.

- `retries.max: N` runs the handler at most N+1 times for handler failures (memory queue with in-process
  agents, and real Redis with `codeforge-agent` processes);
- an agent that dies (SIGKILL) spends the task's lost-lease budget, not the step's retries;
- the lease is the pool's (`CODEFORGE_LEASE_SECONDS`), not the task's 30 s default;
- a SIGTERM drain that runs out of grace spends no handler retry;
- `codeforge run` restarts an agent process that dies, and says why when it gives up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from codeforge.api.task import DEFAULT_MAX_LOST_LEASES, Task, TaskState
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import AgentProcesses, InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowOutcome, WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.queue import LOST_LEASE_BUDGET_SPENT, TaskQueue, open_queue
from support.agent_procs import TESTS_DIR, agent_env, running_agents

FUNCS = "support.retry_agents"
CODEFORGE = Path(sys.executable).parent / "codeforge"


def new_pool(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def one_step(pool: str, params: dict[str, object], retries: str = "") -> WorkflowSpec:
    step = {"name": "work", "pool": pool, "params": params}
    if retries:
        step["retries"] = yaml.safe_load(retries)
    return parse_workflow_spec({"steps": [step]})


def runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def run_on(url: str, workflow_id: str, spec: WorkflowSpec, timeout: float = 90) -> WorkflowOutcome:
    queue = await open_queue(url)
    try:
        if url.startswith("memory"):
            return await asyncio.wait_for(WorkflowRunner(queue).run(workflow_id, spec), timeout)
        saver = await open_checkpointer(url)
        try:
            return await asyncio.wait_for(WorkflowRunner(queue, saver).run(workflow_id, spec), timeout)
        finally:
            await saver.aclose()
    finally:
        await queue.close()


# --- the handler's budget: retries.max N -> N+1 runs ------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=[pytest.mark.redis])])
async def test_retries_max_2_runs_a_failing_handler_exactly_3_times(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    pool = new_pool("flaky")
    spec = one_step(pool, {"log": str(log)}, "{max: 2, backoffSeconds: 0.05}")
    agents = [PoolSpec(pool, "python", {"pythonFunction": f"{FUNCS}:always_flaky"}, concurrency=2)]
    if backend == "memory":
        queue = await open_queue("memory://")
        try:
            async with InProcessAgents(queue, agents):
                outcome = await asyncio.wait_for(WorkflowRunner(queue).run("wf-flaky", spec), 60)
        finally:
            await queue.close()
    else:
        url = str(request.getfixturevalue("redis_url"))
        with AgentProcesses(url, agents, TESTS_DIR):
            outcome = await run_on(url, f"wf-flaky-{uuid.uuid4().hex[:6]}", spec)

    assert outcome.status == "failed"
    assert len(runs(log)) == 3, f"retries.max 2 must mean 3 handler runs, not {len(runs(log))}:\n{runs(log)}"
    assert [line.split()[0].rsplit("/", 1)[1] for line in runs(log)] == ["a0", "a1", "a2"]
    assert outcome.error is not None
    assert "flaky dependency: connection reset" in outcome.error


# --- the lost-lease budget: agent deaths do not spend the step's retries ----------------------------------


@pytest.mark.redis
@pytest.mark.slow
async def test_three_agent_deaths_do_not_fail_a_step_without_retries(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    pool = new_pool("dies")
    spec = one_step(pool, {"log": str(log), "deaths": 3})  # no retries configured
    env = agent_env(
        pool, redis_url, handler="python", python_function=f"{FUNCS}:die_first_runs", lease_seconds="1"
    )
    async with running_agents(env, count=4) as agents:
        outcome = await run_on(redis_url, f"wf-dies-{uuid.uuid4().hex[:6]}", spec)
        dead = [agent for agent in agents if not agent.alive]

    assert outcome.status == "succeeded", outcome.error
    assert len(dead) == 3, "each of the first three runs killed its agent"
    lines = runs(log)
    assert len(lines) == 4
    assert {line.split()[0] for line in lines} == {lines[0].split()[0]}, (
        "one task, redelivered: no new attempt"
    )
    assert outcome.results["work"]["run"] == 4


@pytest.mark.slow
async def test_vanishing_consumers_do_not_spend_the_steps_retries_on_memory(tmp_path: Path) -> None:
    """The memory queue's agents live in-process, so their deaths are consumers that claim and go silent."""
    log = tmp_path / "runs.log"
    pool = new_pool("vanish")
    spec = one_step(pool, {"log": str(log), "deaths": 0})
    queue = await open_queue("memory://")
    try:
        job = asyncio.create_task(WorkflowRunner(queue).run("wf-vanish", spec))
        for loss in range(3):
            lease = await queue.claim(pool, f"doomed-{loss}", timeout=30, lease_seconds=0.1)
            assert lease is not None
            assert lease.task.attempts == loss + 1  # the same task, redelivered
        agents = [PoolSpec(pool, "python", {"pythonFunction": f"{FUNCS}:die_first_runs"})]
        async with InProcessAgents(queue, agents):
            outcome = await asyncio.wait_for(job, 30)
    finally:
        await queue.close()
    assert outcome.status == "succeeded", outcome.error
    assert len(runs(log)) == 1


async def test_a_step_whose_agents_keep_going_away_fails_on_the_lost_lease_budget_without_retrying() -> None:
    # Ten interrupted runs (drains past their grace: no backoff, so the test is quick) spend the task's whole
    # lost-lease budget; the step fails with that reason and does not start attempt a1, retries or not.
    pool = new_pool("goner")
    spec = one_step(pool, {}, "{max: 2, backoffSeconds: 0}")
    queue = await open_queue("memory://")
    try:
        job = asyncio.create_task(WorkflowRunner(queue).run("wf-goner", spec))
        for run in range(DEFAULT_MAX_LOST_LEASES):
            lease = await queue.claim(pool, f"agent-{run}", timeout=30)
            assert lease is not None
            assert lease.id.endswith("/a0"), "agent losses must not start a new attempt"
            await queue.release(lease, started=True, reason=f"agent-{run} shut down before the task finished")
        outcome = await asyncio.wait_for(job, 30)
        assert await queue.get(pool, "wf-goner/work/v1/p0/a1") is None
    finally:
        await queue.close()
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert LOST_LEASE_BUDGET_SPENT in outcome.error, outcome.error
    assert f"lost {DEFAULT_MAX_LOST_LEASES} of {DEFAULT_MAX_LOST_LEASES}" in outcome.error


# --- the lease length is the pool's ---------------------------------------------------------------------


@pytest.mark.redis
async def test_a_dead_agents_task_comes_back_after_the_pools_lease_not_30s(redis_url: str) -> None:
    pool = new_pool("lease")
    env = agent_env(
        pool, redis_url, handler="python", python_function="support.agent_funcs:whoami", lease_seconds="1"
    )
    queue = await open_queue(redis_url)
    try:
        # The task itself asks for the 30 s default; the pool's agents say 1 s.
        await queue.enqueue(Task(id="k1", pool=pool, payload={"seconds": 2.0}))
        async with running_agents(env) as [doomed]:
            await doomed.wait_for_log("task_id=k1")
            doomed.signal(signal.SIGKILL)
            await doomed.wait()
        killed = time.monotonic()
        async with running_agents(env) as [rescuer]:
            outcome = await queue.wait_result(pool, "k1", timeout=15)
            assert rescuer.alive
        took = time.monotonic() - killed
    finally:
        await queue.close()
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.attempts == 2
    assert took < 10, f"redelivered {took:.1f}s after the kill: the 1 s pool lease was not used"


# --- drains spend nothing of the handler's budget -----------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
async def test_drains_past_grace_spend_no_handler_retry(redis_url: str, tmp_path: Path) -> None:
    pool = new_pool("drain")
    log, marker = tmp_path / "runs.log", tmp_path / "fixed"
    env = agent_env(
        pool, redis_url, handler="python", python_function=f"{FUNCS}:slow_until_marker", grace_seconds="0.2"
    )
    queue = await open_queue(redis_url)
    try:
        # One handler run allowed: only a handler failure may spend it.
        payload = {"log": str(log), "marker": str(marker), "seconds": 60}
        await queue.enqueue(Task(id="long", pool=pool, payload=payload, max_attempts=1))
        for drain in range(3):  # scale-in, node drain, rollout: SIGTERM with too little grace
            async with running_agents(env) as [agent]:
                await agent.wait_for_log("claimed")
                agent.signal(signal.SIGTERM)
                assert await agent.wait(timeout=30) == 0
                assert "handed back unfinished (now queued)" in agent.log, agent.log
            assert len(runs(log)) == drain + 1
        marker.touch()
        async with running_agents(env):
            outcome = await queue.wait_result(pool, "long", timeout=30)
    finally:
        await queue.close()
    assert outcome.state is TaskState.SUCCEEDED, outcome.error
    assert outcome.attempts == 4
    assert outcome.result == {"run": 4}


# --- `codeforge run` supervises its agent processes -----------------------------------------------------


def manifest(tmp_path: Path, deaths: int) -> Path:
    path = tmp_path / "wf.yaml"
    pool = new_pool("sup")
    params = {"log": str(tmp_path / "runs.log"), "deaths": deaths}
    path.write_text(
        yaml.safe_dump_all(
            [
                {
                    "kind": "Workflow",
                    "metadata": {"name": "supervised"},
                    "spec": {"steps": [{"name": "work", "pool": pool, "params": params}]},
                },
                {
                    "kind": "AgentPool",
                    "metadata": {"name": pool},
                    "spec": {
                        "handler": {
                            "kind": "python",
                            "settings": {"pythonFunction": f"{FUNCS}:die_first_runs"},
                        },
                        "queue": {"leaseSeconds": 1},
                    },
                },
            ]
        )
    )
    return path


def codeforge_run(path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    return subprocess.run(
        [str(CODEFORGE), "run", str(path), "--queue", url, "-o", "json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.redis
@pytest.mark.slow
def test_codeforge_run_restarts_an_agent_process_that_dies(redis_url: str, tmp_path: Path) -> None:
    run = codeforge_run(manifest(tmp_path, deaths=2), redis_url)

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["results"]["work"]["run"] == 3
    stderr = " ".join(run.stderr.split())
    assert stderr.count("exited with signal SIGKILL; restarting it") == 2, run.stderr


@pytest.mark.redis
@pytest.mark.slow
def test_codeforge_run_gives_up_after_its_restart_budget_and_says_why(redis_url: str, tmp_path: Path) -> None:
    run = codeforge_run(manifest(tmp_path, deaths=100), redis_url, "--agent-restarts", "1")

    assert run.returncode == 2, run.stderr
    stderr = " ".join(run.stderr.split())
    assert "restarting it in 0.5s (restart 1 of 1)" in stderr, run.stderr
    assert "exited with signal SIGKILL; gave up after 1 restart(s) in a row (--agent-restarts 1)" in stderr
    assert "resume the run with --workflow-id" in stderr


# --- the agent process itself ------------------------------------------------------------------------


@pytest.fixture
async def redis_queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    yield q
    await q.close()


@pytest.mark.redis
async def test_an_agent_heartbeats_at_its_pools_lease_so_a_long_task_is_not_redelivered(
    redis_url: str, redis_queue: TaskQueue
) -> None:
    # A 0.6 s pool lease and a 2 s task: the agent must heartbeat every 0.2 s (not every 10 s from the task's
    # 30 s), or a second agent would steal the task.
    pool = new_pool("beat")
    env = agent_env(pool, redis_url, handler="sleep", lease_seconds="0.6")
    await redis_queue.enqueue(Task(id="long", pool=pool, payload={"seconds": 2.0}))
    async with running_agents(env, count=2):
        outcome = await redis_queue.wait_result(pool, "long", timeout=20)
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.attempts == 1
