"""Usage accounting and spec.budget: Workflows on a real Redis with real `codeforge-agent` processes whose
`python` and `command` handlers report tokens and cost in their results."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeforge.api.usage import Budget
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.events import EventKind, ProgressEvent
from codeforge.orchestrator.runner import WorkflowHandle
from codeforge.queue import TaskQueue, open_queue

pytestmark = [pytest.mark.redis, pytest.mark.slow]
TESTS_DIR = Path(__file__).resolve().parents[1]
USAGE_PROGRAM = TESTS_DIR / "support" / "usage_agents.py"

# Each task of plan/write uses 100 tokens (40 in, 60 out) and costs 0.25; review (the command handler,
# reporting OpenAI's field names) uses 30 + 20 and costs 0.5; write fans out to 2 parts.
SPEC = """
steps:
  - {name: plan, pool: %(py)s, params: {tokens_in: 40, tokens_out: 60, cost: 0.25}}
  - {name: write, pool: %(py)s, parallel: 2, join: all, params: {tokens_in: 40, tokens_out: 60, cost: 0.25}}
  - {name: review, pool: %(cmd)s, params: {tokens_in: 30, tokens_out: 20, cost: 0.5}}
edges: [{from: plan, to: write}, {from: write, to: review}]
"""


@dataclass
class Env:
    queue: TaskQueue
    runner: WorkflowRunner
    pools: dict[str, str]

    def spec(self, budget: dict[str, Any] | None = None) -> WorkflowSpec:
        data = yaml.safe_load(SPEC % self.pools)
        if budget is not None:
            data["budget"] = budget
        return parse_workflow_spec(data)


@pytest.fixture
async def env(redis_url: str) -> AsyncIterator[Env]:
    suffix = uuid.uuid4().hex[:6]
    pools = {"py": f"team-a/spend-{suffix}", "cmd": f"team-a/review-{suffix}"}
    agents = [
        PoolSpec(pools["py"], "python", {"pythonFunction": "support.usage_agents:spend"}, concurrency=4),
        PoolSpec(pools["cmd"], "command", {"command": [sys.executable, str(USAGE_PROGRAM)]}, concurrency=2),
    ]
    queue = await open_queue(redis_url)
    saver = await open_checkpointer(redis_url)
    try:
        with AgentProcesses(redis_url, agents, TESTS_DIR):
            yield Env(queue, WorkflowRunner(queue, saver), pools)
    finally:
        await queue.close()
        await saver.aclose()


async def test_usage_is_counted_per_step_and_in_total(env: Env) -> None:
    events: list[ProgressEvent] = []
    outcome = await asyncio.wait_for(
        env.runner.run(f"wf-{uuid.uuid4().hex[:6]}", env.spec(), emit=events.append), 60
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.usage == {
        "total": {"tokensIn": 150, "tokensOut": 200, "cost": 1.25},
        "steps": {
            "plan": {"tokensIn": 40, "tokensOut": 60, "cost": 0.25},
            "review": {"tokensIn": 30, "tokensOut": 20, "cost": 0.5},
            "write": {"tokensIn": 80, "tokensOut": 120, "cost": 0.5},
        },
    }
    usage_events = [e for e in events if e.kind is EventKind.USAGE]
    assert len(usage_events) == 4  # one per task
    assert usage_events[-1].detail == {
        "step": {"tokensIn": 30, "tokensOut": 20, "cost": 0.5},
        "total": {"tokensIn": 150, "tokensOut": 200, "cost": 1.25},
    }


async def test_reaching_the_budget_fails_the_run_naming_the_step(env: Env) -> None:
    """plan uses 100 tokens, write 200 more: maxTokens 250 is reached by write, so review never runs."""
    run_id = f"wf-{uuid.uuid4().hex[:6]}"
    events: list[ProgressEvent] = []
    outcome = await asyncio.wait_for(
        env.runner.run(run_id, env.spec({"maxTokens": 250}), emit=events.append), 60
    )
    assert outcome.status == "failed"
    assert outcome.reason == "BudgetExceeded"
    assert outcome.error is not None
    assert "budget exceeded at step 'write'" in outcome.error
    assert "300 of maxTokens 250" in outcome.error
    assert outcome.usage is not None
    assert set(outcome.usage["steps"]) == {"plan", "write"}
    # Nothing was dispatched after the budget was reached: review's task does not exist.
    assert await env.queue.get(env.pools["cmd"], f"{run_id}/review/v1/p0/a0") is None
    exceeded = [e for e in events if e.kind is EventKind.BUDGET_EXCEEDED]
    assert [(e.step, e.status) for e in exceeded] == [("write", "Fail")]


async def test_the_cost_budget_counts_too(env: Env) -> None:
    outcome = await asyncio.wait_for(
        env.runner.run(f"wf-{uuid.uuid4().hex[:6]}", env.spec({"maxCost": 0.2})), 60
    )
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "budget exceeded at step 'plan'" in outcome.error
    assert "cost 0.25 of maxCost 0.2" in outcome.error


async def test_on_exceed_suspend_waits_for_a_raised_budget(env: Env) -> None:
    run_id = f"wf-{uuid.uuid4().hex[:6]}"
    events: list[ProgressEvent] = []
    control = WorkflowHandle()
    spec = env.spec({"maxTokens": 250, "onExceed": "Suspend"})
    run = asyncio.ensure_future(env.runner.run(run_id, spec, emit=events.append, control=control))
    for _ in range(300):
        if any(e.kind is EventKind.BUDGET_EXCEEDED for e in events):
            break
        await asyncio.sleep(0.05)
    exceeded = [e for e in events if e.kind is EventKind.BUDGET_EXCEEDED]
    assert [(e.step, e.status) for e in exceeded] == [("write", "Suspend")]
    await asyncio.sleep(0.5)
    assert not run.done()
    assert await env.queue.get(env.pools["cmd"], f"{run_id}/review/v1/p0/a0") is None
    control.resume()  # spec.suspend: false does not override the budget
    await asyncio.sleep(0.3)
    assert await env.queue.get(env.pools["cmd"], f"{run_id}/review/v1/p0/a0") is None
    control.set_budget(Budget(max_tokens=1000))
    outcome = await asyncio.wait_for(run, 60)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.usage is not None
    assert outcome.usage["total"]["tokensIn"] + outcome.usage["total"]["tokensOut"] == 350
    assert any(e.kind is EventKind.BUDGET_RAISED for e in events)
