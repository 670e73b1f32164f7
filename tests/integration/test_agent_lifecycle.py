"""SIGTERM drains, SIGKILL loses nothing, failures are reported on the task and the agent keeps running.

All with the real `codeforge-agent` process and a real redis-server.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import free_port
from support.agent_procs import agent_env, run_to_exit, running_agents, start_agent

pytestmark = pytest.mark.redis
COMMAND = Path(__file__).parents[1] / "support" / "agent_command.py"


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    yield q
    await q.close()


def new_pool() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


async def test_sigterm_finishes_the_task_in_flight_then_exits_0(redis_url: str, queue: TaskQueue) -> None:
    pool = new_pool()
    env = agent_env(pool, redis_url, handler="sleep", concurrency="2", claim_wait="3", grace_seconds="20")
    async with running_agents(env) as [agent]:
        await queue.enqueue(Task(id="busy", pool=pool, payload={"seconds": 1.5}))
        await agent.wait_for_log("task_id=busy")
        agent.signal(signal.SIGTERM)
        await agent.wait_for_log("received SIGTERM")
        # The agent's second slot is inside a blocking claim right now; a task arriving now is claimed
        # after the stop, so the agent must give it back unstarted.
        await queue.enqueue(Task(id="late", pool=pool, payload={"seconds": 0}))
        assert await agent.wait(timeout=30) == 0
        log = agent.log
    busy = await queue.get(pool, "busy")
    late = await queue.get(pool, "late")
    assert busy is not None
    assert busy.state is TaskState.SUCCEEDED
    assert late is not None
    assert late.state is TaskState.QUEUED
    assert late.attempts == 0, "a released task's attempt must not count"
    assert "released unstarted task" in log
    assert "draining 1 in-flight task(s)" in log
    assert (await queue.stats(pool)).in_flight == 0


async def test_sigterm_past_grace_hands_the_task_back(redis_url: str, queue: TaskQueue) -> None:
    pool = new_pool()
    env = agent_env(
        pool, redis_url, handler="command", command=f"{sys.executable} {COMMAND}", grace_seconds="0.5"
    )
    async with running_agents(env) as [agent]:
        await queue.enqueue(Task(id="long", pool=pool, payload={"mode": "hang"}))
        await agent.wait_for_log("task_id=long")
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert await agent.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
    outcome = await queue.get(pool, "long")
    assert outcome is not None
    assert outcome.state is TaskState.QUEUED  # retryable: another agent takes it
    assert outcome.error is not None
    assert "shut down before the task finished" in outcome.error


async def test_sigkill_mid_task_is_redelivered_and_recorded_once(redis_url: str, queue: TaskQueue) -> None:
    pool = new_pool()
    env = agent_env(
        pool, redis_url, handler="python", python_function="support.agent_funcs:whoami", lease_seconds="1"
    )
    async with running_agents(env) as [doomed]:
        await queue.enqueue(Task(id="k1", pool=pool, payload={"seconds": 1.0}))  # the pool's 1 s lease
        await doomed.wait_for_log("task_id=k1")
        doomed.signal(signal.SIGKILL)
        await doomed.wait()
        async with running_agents(env) as [rescuer]:
            outcome = await queue.wait_result(pool, "k1", timeout=30)
            assert rescuer.alive
            rescuer_pid = rescuer.pid
            # Give the dead agent's lease every chance to "come back": nothing else may be recorded.
            await asyncio.sleep(1.5)
            again = await queue.get(pool, "k1")
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"pid": rescuer_pid}
    assert outcome.attempts == 2
    assert again == outcome


@pytest.mark.parametrize(
    ("settings", "payload", "expected"),
    [
        pytest.param(
            {"handler": "python", "python_function": "support.agent_funcs:maybe_hang", "task_timeout": "0.5"},
            {"hang": True},
            "handler timed out after 0.5s (--task-timeout)",
            id="hangs-past-timeout",
        ),
        pytest.param(
            {"handler": "command", "command": f"{sys.executable} {COMMAND}"},
            {"mode": "garbage"},
            "printed output that is not JSON",
            id="command-prints-non-json",
        ),
        pytest.param(
            {"handler": "python", "python_function": "support.agent_funcs_missing:run"},
            {},
            "cannot import module 'support.agent_funcs_missing'",
            id="bad-module-function",
        ),
        pytest.param(
            {"handler": "openai", "openai_base_url": "http://127.0.0.1:9/v1"},
            {"prompt": "x"},
            "no API key: set CODEFORGE_OPENAI_API_KEY",
            id="missing-api-key",
        ),
    ],
)
async def test_failure_is_clear_on_the_task_and_the_agent_keeps_running(
    redis_url: str, queue: TaskQueue, settings: dict[str, str], payload: dict[str, object], expected: str
) -> None:
    pool = new_pool()
    async with running_agents(agent_env(pool, redis_url, **settings)) as [agent]:
        for task_id in ("first", "second"):  # the second proves the agent survived the first
            await queue.enqueue(Task(id=task_id, pool=pool, payload=payload, max_attempts=1))
            outcome = await queue.wait_result(pool, task_id, timeout=30)
            assert outcome.state in (TaskState.FAILED, TaskState.DEAD)
            assert outcome.error is not None
            assert expected in outcome.error
        assert agent.alive
        assert "Traceback" not in agent.log


async def test_unreachable_queue_is_retried_alive_but_not_ready_and_sigterm_exits_0() -> None:
    dead_port = free_port()  # nothing listens here
    env = agent_env(
        "agent-waiting", f"redis://127.0.0.1:{dead_port}/0", health_port="0", health_host="127.0.0.1"
    )
    agent = start_agent(env)
    try:
        await agent.wait_for_log("queue unreachable, retrying")
        match = re.search(r"health server on 127\.0\.0\.1:(\d+)", agent.log)
        assert match is not None
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{match.group(1)}"
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200  # alive: restarting the pod would not bring Redis up sooner
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
        agent.signal(signal.SIGTERM)
        assert await agent.wait(timeout=30) == 0
    finally:
        agent.kill()
        agent.log_path.unlink()


async def test_health_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = agent_env("agent-port", "redis://127.0.0.1:1/0", health_port=str(port), health_host="127.0.0.1")
        code, log = await run_to_exit(env)
    assert code == 2
    assert "--health-port / CODEFORGE_HEALTH_PORT: cannot listen on" in log
    assert "Traceback" not in log


async def test_a_stuck_sync_function_fails_on_time_and_does_not_block_exit(
    redis_url: str, queue: TaskQueue
) -> None:
    pool = new_pool()
    env = agent_env(
        pool, redis_url, handler="python", python_function="support.agent_funcs:hang_sync", task_timeout="0.5"
    )
    async with running_agents(env) as [agent]:
        await queue.enqueue(Task(id="stuck", pool=pool, max_attempts=1))
        outcome = await queue.wait_result(pool, "stuck", timeout=30)
        agent.signal(signal.SIGTERM)
        assert await agent.wait(timeout=20) == 0  # the interpreter would otherwise join the hung thread
    assert outcome.state is TaskState.DEAD
    assert outcome.error is not None
    assert "timed out after 0.5s" in outcome.error
