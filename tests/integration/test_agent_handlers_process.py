"""Each handler kind through the real `codeforge-agent` process against a real redis-server."""

from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import open_queue
from support.agent_procs import agent_env, running_agents
from support.agent_servers import Recorded, fake_openai, serve, task_service

pytestmark = pytest.mark.redis
COMMAND = Path(__file__).parents[1] / "support" / "agent_command.py"


def new_pool() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


async def run_one(redis_url: str, payload: Any, **settings: str) -> Any:
    """Start one agent with these settings, run one task through it, return the outcome."""
    pool = new_pool()
    queue = await open_queue(redis_url)
    try:
        async with running_agents(agent_env(pool, redis_url, **settings)) as [agent]:
            await queue.enqueue(Task(id="t1", pool=pool, payload=payload, max_attempts=1))
            outcome = await queue.wait_result(pool, "t1", timeout=30)
            assert agent.alive
            return outcome
    finally:
        await queue.close()


async def test_echo(redis_url: str) -> None:
    outcome = await run_one(redis_url, {"hello": "world"}, handler="echo")
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"hello": "world"}


async def test_sleep(redis_url: str) -> None:
    outcome = await run_one(redis_url, {"seconds": 0.2}, handler="sleep")
    assert outcome.result == {"slept": 0.2, "payload": {"seconds": 0.2}}


async def test_fail(redis_url: str) -> None:
    outcome = await run_one(redis_url, {"message": "on purpose", "retryable": False}, handler="fail")
    assert outcome.state is TaskState.FAILED
    assert outcome.error == "on purpose"


async def test_python(redis_url: str) -> None:
    outcome = await run_one(
        redis_url, {"text": "hi"}, handler="python", python_function="support.agent_funcs:async_shout"
    )
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result["text"] == "HI"


async def test_command(redis_url: str, tmp_path: Path) -> None:
    outcome = await run_one(
        redis_url,
        {"mode": "echo"},
        handler="command",
        command=f"{sys.executable} {COMMAND}",
        command_cwd=str(tmp_path),
    )
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"echo": {"mode": "echo"}, "task": "t1"}


async def test_command_nonzero_exit_records_the_stderr_tail(redis_url: str) -> None:
    outcome = await run_one(
        redis_url, {"mode": "exit"}, handler="command", command=f"{sys.executable} {COMMAND}"
    )
    assert outcome.state is TaskState.DEAD  # retryable, but max_attempts=1
    assert "exited with code 4" in outcome.error
    assert "Traceback: the model refused" in outcome.error


async def test_http(redis_url: str) -> None:
    recorded = Recorded()
    async with serve(task_service(recorded)) as base:
        outcome = await run_one(redis_url, {"text": "abc"}, handler="http", http_url=f"{base}/run")
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"reversed": "cba"}
    assert recorded.requests[0]["id"] == "t1"


async def test_openai(redis_url: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test")
    recorded = Recorded()
    async with serve(fake_openai(recorded)) as base:
        outcome = await run_one(
            redis_url,
            {"prompt": "write tests"},
            handler="openai",
            openai_base_url=f"{base}/v1",
            openai_model="local-tiny",
            openai_api_key_file=str(key),
        )
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result["content"] == "WRITE TESTS"
    assert recorded.requests[0]["model"] == "local-tiny"


async def test_json_logs_carry_task_workflow_and_step(redis_url: str) -> None:
    pool = new_pool()
    queue = await open_queue(redis_url)
    try:
        async with running_agents(agent_env(pool, redis_url, log_format="json")) as [agent]:
            await queue.enqueue(Task(id="wf1/plan", pool=pool, workflow="wf1", step="plan", payload=1))
            await queue.wait_result(pool, "wf1/plan", timeout=30)
            await agent.wait_for_log('"event": "completed"')
            lines = [line for line in agent.log.splitlines() if '"completed"' in line]
    finally:
        await queue.close()
    entry = json.loads(lines[0])
    assert (entry["task_id"], entry["workflow"], entry["step"], entry["pool"]) == (
        "wf1/plan",
        "wf1",
        "plan",
        pool,
    )


async def test_health_ready_and_metrics_of_the_agent_process(redis_url: str) -> None:
    pool = new_pool()
    queue = await open_queue(redis_url)
    try:
        env = agent_env(pool, redis_url, health_port="0", health_host="127.0.0.1")
        async with running_agents(env) as [agent], aiohttp.ClientSession() as http:
            await agent.wait_for_log("health server on 127.0.0.1:")
            port = int(re.search(r"health server on 127\.0\.0\.1:(\d+)", agent.log).group(1))  # type: ignore[union-attr]
            await queue.enqueue(Task(id="m1", pool=pool, payload=1))
            await queue.wait_result(pool, "m1", timeout=30)
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
    finally:
        await queue.close()
    assert f'codeforge_agent_tasks_completed_total{{handler="echo",pool="{pool}"}} 1.0' in metrics


@pytest.mark.cluster
async def test_agent_serves_a_pool_on_redis_cluster(cluster_url: str) -> None:
    outcome = await run_one(cluster_url, {"on": "cluster"}, handler="echo")
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"on": "cluster"}
