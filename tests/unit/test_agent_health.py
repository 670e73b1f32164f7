"""/healthz, /readyz and /metrics served by a running in-process agent."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from codeforge.api.task import Task
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis
from codeforge_agent import Agent, AgentConfig, HandlerConfig
from codeforge_agent.health import HealthServer


async def test_health_ready_and_metrics_while_serving_memory_queue() -> None:
    queue = await open_queue("memory://")
    agent = Agent(queue, AgentConfig(pool="health", handler=HandlerConfig(kind="echo"), claim_wait=0.05))
    server = HealthServer("127.0.0.1", 0, agent)
    await server.start()
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    try:
        await queue.enqueue(Task(id="m1", pool="health", payload=1))
        await queue.wait_result("health", "m1", timeout=5)
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
        assert 'codeforge_agent_tasks_claimed_total{handler="echo",pool="health"} 1.0' in text
        assert 'codeforge_agent_tasks_completed_total{handler="echo",pool="health"} 1.0' in text
        assert "codeforge_agent_handler_duration_seconds_bucket" in text
        assert "codeforge_agent_claim_latency_seconds_count" in text
        assert "codeforge_agent_tasks_in_flight" in text
    finally:
        stop.set()
        await runner
        await server.stop()


@pytest.mark.redis
async def test_readyz_fails_when_redis_is_gone() -> None:
    server_proc = LocalRedis().start()
    queue = await open_queue(server_proc.url)
    agent = Agent(queue, AgentConfig(pool="health", queue_url=server_proc.url))
    server = HealthServer("127.0.0.1", 0, agent)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/readyz") as r:
                assert r.status == 200
            server_proc.kill()
            async with http.get(f"http://127.0.0.1:{server.port}/readyz") as r:
                assert r.status == 503
                assert (await r.json())["status"] == "queue unreachable"
            async with http.get(f"http://127.0.0.1:{server.port}/healthz") as r:
                assert r.status == 200  # alive: restarting the pod would not bring Redis back
    finally:
        await server.stop()
        await queue.close()
        server_proc.stop()
