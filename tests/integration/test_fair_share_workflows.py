"""Fair share through the orchestrator (README, "Fair share"): Workflows sharing one pool on real Redis, run
by `WorkflowRunner` with real `codeforge-agent` processes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from codeforge.api.workflow import parse_workflow_spec
from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.events import EventKind, ProgressEvent
from codeforge.queue import open_queue

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TESTS_DIR = Path(__file__).resolve().parents[1]
SECONDS = 0.1


def fan_spec(pool: str, parts: int, log: Path, fair_share: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {
        "steps": [
            {"name": "work", "pool": pool, "parallel": parts, "params": {"log": str(log), "seconds": SECONDS}}
        ]
    }
    if fair_share is not None:
        spec["fairShare"] = fair_share
    return parse_workflow_spec(spec)


def read_log(log: Path) -> list[tuple[str, float, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        task_id, start, end = line.split()
        rows.append((task_id, float(start), float(end)))
    return rows


async def run_two(
    url: str, tmp_path: Path, *, concurrency: int, big_share: Any, small_share: Any
) -> list[tuple[str, float, float]]:
    """A 24-part Workflow starts; once its first tasks finished, a 3-part one starts in the same pool."""
    pool = f"shared-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "runs.log"
    handler = {"pythonFunction": "support.workflow_agents:timed_sleep"}
    agents = [PoolSpec(pool, "python", handler, concurrency)]
    queue = await open_queue(url)
    saver = await open_checkpointer(url)
    runner = WorkflowRunner(queue, saver)
    try:
        with AgentProcesses(url, agents, TESTS_DIR):
            dispatched = asyncio.Event()
            count = 0

            def on_event(event: ProgressEvent) -> None:
                nonlocal count
                count += event.kind is EventKind.TASK_DISPATCHED
                if count == 24:
                    dispatched.set()

            big_id = f"big-{pool}"
            big = asyncio.ensure_future(
                runner.run(big_id, fan_spec(pool, 24, log, big_share), emit=on_event, namespace="team-a")
            )
            await asyncio.wait_for(dispatched.wait(), 30)
            await queue.wait_result(pool, f"{big_id}/work/v1/p0/a0", timeout=30)  # the backlog is running
            small = await asyncio.wait_for(
                runner.run(f"small-{pool}", fan_spec(pool, 3, log, small_share), namespace="team-a"), 60
            )
            assert small.status == "succeeded", small.error
            assert (await asyncio.wait_for(big, 60)).status == "succeeded"
    finally:
        await queue.close()
        await saver.aclose()
    return read_log(log)


async def test_a_later_workflow_takes_turns_with_the_backlog(redis_url: str, tmp_path: Path) -> None:
    runs = await run_two(redis_url, tmp_path, concurrency=2, big_share=None, small_share=None)

    order = [task_id.split("/")[0].split("-")[0] for task_id, _, _ in sorted(runs, key=lambda r: r[1])]
    assert order.count("small") == 3
    # First come first served would run all 24 big tasks first; in turn, small's 3 start among the next
    # few (2 agents' slots: at most ~2 big tasks between two of small's).
    last_small = max(i for i, who in enumerate(order) if who == "small")
    assert last_small < 14, order


async def test_max_concurrency_caps_a_teams_workflows_together(redis_url: str, tmp_path: Path) -> None:
    team = {"concurrencyKey": "workflow.namespace + '-platform'", "maxConcurrency": 2}
    runs = await run_two(redis_url, tmp_path, concurrency=6, big_share=team, small_share=team)

    assert len(runs) == 27
    events = sorted([(start, 1) for _, start, _ in runs] + [(end, -1) for _, _, end in runs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2  # 6 agent slots, but the team's key holds at most 2 leases
