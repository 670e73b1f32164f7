"""The Workflows `bench/operator_scale.py` creates: each its own input, the steps' durations in it (and, with
`--step-jitter`, drawn around `--step-seconds`), run by the real `sleep` handler on the memory queue."""

from __future__ import annotations

import argparse
import time
import uuid
from types import ModuleType

import pytest

from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.queue import open_queue
from support.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("operator_scale")


def test_durations_are_alike_without_jitter_and_spread_and_seeded_with_it(bench: ModuleType) -> None:
    assert bench.step_durations(3, 3, 10.0, 0.0) == [[10.0] * 3] * 3
    spread = bench.step_durations(500, 3, 10.0, 0.5)
    flat = [d for run in spread for d in run]
    assert all(5.0 <= d <= 15.0 for d in flat)
    assert min(flat) < 6.0  # spread over the whole range, not around one value
    assert max(flat) > 14.0
    assert spread == bench.step_durations(500, 3, 10.0, 0.5)  # one size, one draw: runs comparable
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a fraction from 0 to 0\.9"):
        bench.jitter_fraction("1.5")


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "fast"])
def test_a_create_rate_is_a_finite_non_negative_number(bench: ModuleType, text: str) -> None:
    assert bench.create_rate("0") == 0.0
    assert bench.create_rate("105") == 105.0
    with pytest.raises(argparse.ArgumentTypeError, match="not a rate: give creates per second, or 0"):
        bench.create_rate(text)


async def test_each_workflow_sleeps_the_durations_of_its_own_input(bench: ModuleType) -> None:
    docs = [bench.timed_workflow("wf-0", [0.01, 0.05, 0.02]), bench.timed_workflow("wf-1", [0.03, 0.0, 0.04])]
    specs = [parse_workflow_spec(doc["spec"]) for doc in docs]
    queue = await open_queue("memory://")
    try:
        async with InProcessAgents(queue, [PoolSpec(bench.POOL, "sleep", concurrency=4)]):
            runner = WorkflowRunner(queue)
            assert runner.graph(specs[0]) is runner.graph(specs[1])  # one template: one compiled graph
            outcomes = [
                await runner.run(doc["metadata"]["name"], s) for doc, s in zip(docs, specs, strict=True)
            ]
    finally:
        await queue.close()
    for doc, outcome in zip(docs, outcomes, strict=True):
        assert outcome.status == "succeeded", outcome.error
        slept = [outcome.results[step]["slept"] for step in bench.STEPS]
        assert slept == doc["spec"]["input"]["seconds"]


async def test_the_agents_side_timings_come_from_the_task_hashes(bench: ModuleType, redis_url: str) -> None:
    """Each first attempt's task on a real redis-server gives its step's time to Redis, the first step's
    time from its Workflow's creation and each later step's time from its predecessor's finish."""
    pool = f"timings-{uuid.uuid4().hex[:8]}/{bench.POOL}"
    docs = [bench.timed_workflow(f"wf-{i}", [0.05, 0.05, 0.05]) for i in range(3)]
    queue = await open_queue(redis_url)
    created: dict[str, float] = {}
    try:
        async with InProcessAgents(queue, [PoolSpec(pool, "sleep", concurrency=4)]):
            runner = WorkflowRunner(queue)
            for i, doc in enumerate(docs):
                spec = parse_workflow_spec(
                    {**doc["spec"], "steps": [{**s, "pool": pool} for s in doc["spec"]["steps"]]}
                )
                created[f"uid-{i}"] = time.time()
                outcome = await runner.run(f"uid-{i}", spec)
                assert outcome.status == "succeeded", outcome.error
    finally:
        await queue.close()
    created["uid-0"] -= 2.0  # created two seconds before its first task: the start's figure shows it
    timings = bench.task_timings(redis_url, pool, created)
    assert len(timings["start"]) == len(timings["in_redis_first"]) == 3
    assert len(timings["in_redis_later"]) == len(timings["next"]) == 6
    assert 2.0 <= max(timings["start"]) < 3.0
    steps = timings["in_redis_first"] + timings["in_redis_later"] + timings["next"]
    assert all(0.0 <= t < 1.0 for t in steps)
    assert bench.exact_ms([0.001, 0.002, 0.5], 0.5) == 2.0
    assert bench.exact_ms([0.001, 0.002, 0.5], 0.99) == 490.0  # 2 + (500 - 2) * 0.98: linear, as every table
    assert bench.exact_ms([], 0.5) is None
