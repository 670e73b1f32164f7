"""The Workflows `bench/operator_scale.py` creates: each its own input, the steps' durations in it (and, with
`--step-jitter`, drawn around `--step-seconds`), run by the real `sleep` handler on the memory queue."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.queue import open_queue

BENCH = Path(__file__).resolve().parents[2] / "bench" / "operator_scale.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("operator_scale", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
