"""A finished run's queue task records go with its TTL clean-up (`orchestrator.records`), on a real
redis-server with real in-process agents: every attempt and every part of the run, and nothing of another
run sharing the pools."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import yaml

from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.records import forget_run_tasks, run_task_ids
from codeforge.queue import TaskQueue, open_queue
from support.tasks import unique_pool

pytestmark = pytest.mark.redis

FUNCS = "support.workflow_agents"


@pytest.fixture
def pools() -> dict[str, str]:
    return {fn: f"{unique_pool()}-{fn}" for fn in ("tag", "flaky")}


@pytest.fixture
async def queue(redis_url: str, pools: dict[str, str]) -> AsyncIterator[TaskQueue]:
    q = await open_queue(redis_url)
    specs = [PoolSpec(pool, "python", {"pythonFunction": f"{FUNCS}:{fn}"}) for fn, pool in pools.items()]
    async with InProcessAgents(q, specs):
        yield q
    await q.close()


def spec(pools: dict[str, str]) -> WorkflowSpec:
    text = f"""
    steps:
      - {{name: fan, pool: {pools["tag"]}, parallel: 3}}
      - {{name: shaky, pool: {pools["flaky"]}, retries: {{max: 2, backoffSeconds: 0}}}}
    edges: [{{from: fan, to: shaky}}]
    """
    return parse_workflow_spec(yaml.safe_load(text))


async def task_keys(url: str, run: str) -> list[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(match=f"cf:{{*}}:t:{run}/*", count=1000)])
    finally:
        await client.aclose()


async def test_the_ttl_clean_up_removes_the_runs_task_records_and_only_those(
    redis_url: str, queue: TaskQueue, pools: dict[str, str]
) -> None:
    checkpointer = await open_checkpointer(redis_url)
    try:
        runner = WorkflowRunner(queue, checkpointer)
        for run in ("run-a", "run-b"):
            outcome = await runner.run(run, spec(pools))
            assert outcome.status == "succeeded", outcome.error
        before = await task_keys(redis_url, "run-a")
        # Three parts of `fan`, two attempts of `shaky` (its first fails): five records.
        assert len(before) == 5, before
        assert sum("/shaky/" in k for k in before) == 2
        kept = await task_keys(redis_url, "run-b")

        assert await forget_run_tasks(queue, checkpointer, "run-a", spec(pools)) == 5

        assert await task_keys(redis_url, "run-a") == []
        assert await task_keys(redis_url, "run-b") == kept  # the other run's records stay
        assert await forget_run_tasks(queue, checkpointer, "run-a", spec(pools)) == 0
    finally:
        await checkpointer.aclose()


def test_the_ids_cover_attempts_parts_and_a_visit_cut_off_before_its_record() -> None:
    text = """
    steps:
      - {name: a, pool: p, parallel: 2}
      - {name: b, pool: q, retries: {max: 1}}
    edges: [{from: a, to: b}]
    """
    parsed = parse_workflow_spec(yaml.safe_load(text))
    values = {"history": [{"step": "a", "visit": 1, "parts": 2, "attempts": 1}], "visits": {"a": 1}}
    ids = run_task_ids("wf", parsed, values)
    assert {"wf/a/v1/p0/a0", "wf/a/v1/p1/a0"} <= ids["p"]
    assert {"wf/b/v1/p0/a0", "wf/b/v1/p0/a1"} <= ids["q"]  # dispatched, then cut off (no record yet)
    assert not any(i.startswith("wf/b") for i in ids["p"])
