"""The agent's utilisation and queue-wait metrics (issue 13), scraped from the real `codeforge-agent` process
serving a real redis-server."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import open_queue
from support.agent_procs import agent_env, running_agents
from support.prom import scrape, value

pytestmark = pytest.mark.redis

TASK_SECONDS = 0.5
QUEUED_FIRST = 0.6


async def test_queue_wait_busy_and_idle_time_of_the_agent_process(redis_url: str) -> None:
    pool = f"agent-{uuid.uuid4().hex[:10]}"
    queue = await open_queue(redis_url)
    labels = {"pool": pool, "handler": "sleep"}
    try:
        # Two tasks wait before any agent runs: each one's queue wait is at least QUEUED_FIRST, the second
        # one's also the first one's run (one slot).
        for n in (1, 2):
            await queue.enqueue(Task(id=f"t{n}", pool=pool, payload={"seconds": TASK_SECONDS}))
        enqueued = time.monotonic()
        await asyncio.sleep(QUEUED_FIRST)
        env = agent_env(pool, redis_url, handler="sleep", concurrency="1", health_port="0")
        env["CODEFORGE_HEALTH_HOST"] = "127.0.0.1"
        async with running_agents(env) as [agent]:
            await agent.wait_for_log("health server on 127.0.0.1:")
            port = re.search(r"health server on 127\.0\.0\.1:(\d+)", agent.log)
            assert port is not None
            url = f"http://127.0.0.1:{port.group(1)}/metrics"
            for n in (1, 2):
                outcome = await queue.wait_result(pool, f"t{n}", timeout=30)
                assert outcome.state is TaskState.SUCCEEDED
            await asyncio.sleep(0.3)  # the agent's state settles to idle
            first = await scrape(url)
            elapsed = time.monotonic() - enqueued
            await asyncio.sleep(0.5)
            second = await scrape(url)
    finally:
        await queue.close()

    assert value(first, "codeforge_agent_queue_wait_seconds_count", **labels) == 2
    waited = value(first, "codeforge_agent_queue_wait_seconds_sum", **labels)
    assert 2 * QUEUED_FIRST + TASK_SECONDS <= waited < 2 * elapsed
    assert value(first, "codeforge_agent_queue_wait_seconds_bucket", **labels, le="0.1") == 0

    busy = value(first, "codeforge_agent_busy_seconds_total", **labels)
    assert 2 * TASK_SECONDS <= busy < 2 * TASK_SECONDS + 2
    assert value(first, "codeforge_agent_idle_seconds_total", **labels) > 0
    assert value(first, "codeforge_agent_task_slots", **labels) == 1
    assert value(first, "codeforge_agent_tasks_in_flight", **labels) == 0
    assert value(first, "codeforge_agent_handler_duration_seconds_count", **labels) == 2

    # Read at scrape time: idle time grows while nothing runs, busy time stays put.
    assert value(second, "codeforge_agent_busy_seconds_total", **labels) == pytest.approx(busy, abs=0.01)
    idle_gain = value(second, "codeforge_agent_idle_seconds_total", **labels) - value(
        first, "codeforge_agent_idle_seconds_total", **labels
    )
    assert 0.4 <= idle_gain < 5
