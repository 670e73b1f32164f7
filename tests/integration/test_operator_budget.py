"""The operator (Kopf against kmock's Kubernetes emulator) on a real Redis with real `codeforge-agent`
processes: the Workflow status counts usage per step and in total, spec.budget suspends the run naming the
step that crossed it, and raising spec.budget lets it finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import pytest

from codeforge.embedded.agents import AgentProcesses
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import task_id
from codeforge.queue import open_queue
from support.kopf_harness import NS, prepare, running

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(120)]
TESTS_DIR = Path(__file__).resolve().parents[1]


def running_condition(status: dict[str, Any]) -> tuple[str, str, str]:
    found = next(c for c in status["conditions"] if c["type"] == "Running")
    return found["status"], found["reason"], found["message"]


async def test_status_usage_and_a_budget_suspension_lifted_by_a_raised_budget(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    usage = {"tokens_in": 40, "tokens_out": 60, "cost": 0.25}  # 100 tokens a task
    spec = {
        "steps": [{"name": n, "pool": "spenders", "params": usage} for n in ("plan", "write", "review")],
        "edges": [{"from": "plan", "to": "write"}, {"from": "write", "to": "review"}],
        "budget": {"maxTokens": 200, "onExceed": "Suspend"},
    }
    pool = PoolSpec(f"{NS}/spenders", "python", {"pythonFunction": "support.usage_agents:spend"})
    queue = await open_queue(redis_url)
    try:
        with AgentProcesses(redis_url, [pool], TESTS_DIR):
            async with running(kmock) as cluster:
                await cluster.create("spender", spec, uid="uid-spender")
                await cluster.eventually(lambda: cluster.phase("spender") == "Suspended", timeout=60)
                suspended = cluster.status("spender")
                # review was never dispatched: write's result reached the budget.
                review = task_id("uid-spender", "review", 1, 0, 0)
                assert await queue.get(f"{NS}/spenders", review) is None
                await cluster.patch("spender", {"spec": {"budget": {"maxTokens": 1000}}})
                await cluster.eventually(lambda: cluster.phase("spender") == "Succeeded", timeout=60)
                finished = cluster.status("spender")
                # Kopf posts Events in the background: the last may land after the final status.
                await cluster.eventually(lambda: cluster.events("spender", "BudgetRaised"))
                reasons = [e["reason"] for e in cluster.events("spender")]
    finally:
        await queue.close()

    assert running_condition(suspended) == (
        "False",
        "BudgetExceeded",
        "budget exceeded at step 'write': 200 of maxTokens 200 (spec.budget)",
    )
    assert suspended["usage"] == {"tokensIn": 80, "tokensOut": 120, "cost": 0.5}
    assert finished["usage"] == {"tokensIn": 120, "tokensOut": 180, "cost": 0.75}
    assert {s["name"]: s["usage"] for s in finished["steps"]} == {
        name: {"tokensIn": 40, "tokensOut": 60, "cost": 0.25} for name in ("plan", "write", "review")
    }
    assert "BudgetExceeded" in reasons
    assert "BudgetRaised" in reasons
