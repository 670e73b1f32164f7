"""The Workflow handlers, run by a real Kopf operator against kmock's Kubernetes emulator, with real agents
(`codeforge_agent`, in-process) on a real redis-server. Each test uses its own pools, so queues never mix."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import kmock
import pytest

from codeforge.api.task import TaskState
from codeforge.orchestrator import task_id
from support.kopf_harness import NS, agents, prepare, running

pytestmark = [pytest.mark.timeout(90), pytest.mark.redis]


@pytest.fixture
def operator_env(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> kmock.KubernetesEmulator:
    prepare(kmock, tmp_path, monkeypatch, redis_url)
    return kmock


def chain(pool: str, *names: str, **params: Any) -> dict[str, Any]:
    return {
        "input": {"n": 1},
        "steps": [{"name": n, "pool": pool, "params": dict(params)} for n in names],
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(names)],
    }


async def test_a_valid_workflow_runs_to_succeeded(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    async with agents(redis_url, {f"{NS}/echo-ok": ("echo", {})}), running(operator_env) as cluster:
        await cluster.create("ok", chain("echo-ok", "research", "implement", "review"))
        await cluster.eventually(lambda: cluster.phase("ok") == "Succeeded")
        status = cluster.status("ok")
        assert status["progress"] == "3/3"
        assert status.get("currentStep") is None
        assert [(s["name"], s["phase"], s["attempts"], s["pool"]) for s in status["steps"]] == [
            ("research", "Succeeded", 1, "echo-ok"),
            ("implement", "Succeeded", 1, "echo-ok"),
            ("review", "Succeeded", 1, "echo-ok"),
        ]
        assert all(s["startTime"] and s["finishTime"] for s in status["steps"])
        assert status["startTime"]
        assert status["completionTime"]
        assert status["result"]["review"]["step"] == "review"  # echo returns its payload
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
        assert conditions["Finished"] == ("True", "Succeeded")
        assert conditions["Running"] == ("False", "Finished")
        assert not any(key.startswith("kopf") for key in status)
        await cluster.eventually(lambda: cluster.events("ok", "WorkflowSucceeded"))
        # A step's routine start and success are not Events by default (status.steps has them): one Event
        # per successful Workflow instead of seven (CODEFORGE_WORKFLOW_STEP_EVENTS brings them back).
        assert not cluster.events("ok", "StepStarted")
        assert not cluster.events("ok", "StepSucceeded")
        # Kopf keeps no last-handled configuration of a Workflow (a PATCH per Workflow saved), only the
        # finalizer its deletion cleanup needs.
        meta = (cluster.get("ok") or {})["metadata"]
        assert not any(key.endswith("last-handled-configuration") for key in meta.get("annotations", {}))
        assert "codeforge.ai/finalizer" in meta["finalizers"]
        # The step ran in the AgentPool's queue, `namespace/pool`, under the Workflow's uid.
        outcome = await cluster.queue.get(f"{NS}/echo-ok", task_id("uid-ok", "research", 1, 0, 0))
        assert outcome is not None
        assert outcome.state is TaskState.SUCCEEDED


async def test_an_invalid_spec_fails_with_a_condition_naming_the_field(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    async with agents(redis_url, {f"{NS}/echo-fix": ("echo", {})}), running(operator_env) as cluster:
        bad = chain("echo-fix", "one", "two")
        bad["edges"] = [{"from": "one", "to": "nowhere"}]
        await cluster.create("bad", bad)
        await cluster.eventually(lambda: cluster.phase("bad") == "Failed")
        (invalid,) = [c for c in cluster.status("bad")["conditions"] if c["type"] == "Invalid"]
        assert invalid["status"] == "True"
        assert invalid["reason"] == "InvalidSpec"
        assert "spec.edges[0].to" in invalid["message"]
        assert "nowhere" in invalid["message"]
        await cluster.eventually(lambda: bool(cluster.events("bad", "InvalidSpec")))  # posted in background

        # The operator keeps working, and fixing the spec runs the Workflow.
        await cluster.create("good", chain("echo-fix", "one"))
        await cluster.eventually(lambda: cluster.phase("good") == "Succeeded")
        await cluster.patch("bad", {"spec": {"edges": [{"from": "one", "to": "two"}]}})
        await cluster.eventually(lambda: cluster.phase("bad") == "Succeeded")
        assert not [c for c in cluster.status("bad")["conditions"] if c["type"] == "Invalid"]


async def test_suspend_pauses_dispatching_and_resume_continues(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    async with agents(redis_url, {f"{NS}/echo-sus": ("echo", {})}), running(operator_env) as cluster:
        await cluster.create("paused", {**chain("echo-sus", "first", "second"), "suspend": True})
        await cluster.eventually(lambda: cluster.phase("paused") == "Suspended")
        running_condition = [c for c in cluster.status("paused")["conditions"] if c["type"] == "Running"]
        assert running_condition[0]["reason"] == "Suspended"
        stats = await cluster.queue.stats(f"{NS}/echo-sus")
        assert stats.queued == 0
        assert stats.in_flight == 0
        first = await cluster.queue.get(f"{NS}/echo-sus", task_id("uid-paused", "first", 1, 0, 0))
        assert first is None

        await cluster.patch("paused", {"spec": {"suspend": False}})
        await cluster.eventually(lambda: cluster.phase("paused") == "Succeeded")
        assert cluster.status("paused")["progress"] == "2/2"


async def test_delete_cancels_outstanding_tasks_and_removes_checkpoints(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    # No agent serves this pool: the first task stays queued until the Workflow is deleted.
    async with running(operator_env) as cluster:
        await cluster.create("doomed", chain("nobody", "wait", "never"))
        tid = task_id("uid-doomed", "wait", 1, 0, 0)
        await cluster.eventually(lambda: cluster.status("doomed").get("currentStep") == "wait")
        for _ in range(200):  # the status says the step started; its enqueue may still be on its way
            record = await cluster.queue.get(f"{NS}/nobody", tid)
            if record is not None:
                break
            await asyncio.sleep(0.05)
        assert record is not None
        assert record.state is TaskState.QUEUED
        runner = cluster.workflows.runner
        assert runner is not None
        assert await runner.checkpointer.aget_tuple({"configurable": {"thread_id": "uid-doomed"}})

        await cluster.delete("doomed")
        await cluster.eventually(lambda: cluster.get("doomed") is None)  # the finalizer was released
        record = await cluster.queue.get(f"{NS}/nobody", tid)
        assert record is not None
        assert record.state is TaskState.CANCELLED
        assert await runner.checkpointer.aget_tuple({"configurable": {"thread_id": "uid-doomed"}}) is None
        assert "uid-doomed" not in cluster.workflows.runs


async def test_a_failed_workflow_is_retried_from_its_failed_step(
    operator_env: kmock.KubernetesEmulator, redis_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    pools = {
        f"{NS}/echo-retry": ("echo", {}),
        f"{NS}/gate-retry": ("python", {"pythonFunction": "support.retry_agents:fail_until_marker"}),
    }
    spec = {
        "input": {"marker": str(marker)},
        "steps": [
            {"name": "plan", "pool": "echo-retry"},
            {"name": "build", "pool": "gate-retry", "params": {"marker": str(marker)}},
            {"name": "ship", "pool": "echo-retry"},
        ],
        "edges": [{"from": "plan", "to": "build"}, {"from": "build", "to": "ship"}],
    }
    async with agents(redis_url, pools), running(operator_env) as cluster:
        await cluster.create("flaky", spec)
        await cluster.eventually(lambda: cluster.phase("flaky") == "Failed")
        status = cluster.status("flaky")
        assert status["progress"] == "2/3"
        assert {s["name"]: s["phase"] for s in status["steps"]} == {"plan": "Succeeded", "build": "Failed"}
        assert "marker missing" in status["message"]

        marker.write_text("ok")
        await cluster.patch("flaky", {"metadata": {"annotations": {"codeforge.ai/retry": "1"}}})
        await cluster.eventually(lambda: cluster.phase("flaky") == "Succeeded")
        status = cluster.status("flaky")
        assert status["retries"] == 1
        assert status["retryToken"] == "1"
        steps = {s["name"]: s for s in status["steps"]}
        assert steps["build"]["visits"] == 2
        assert steps["plan"]["visits"] == 1
        # plan ran once: no task for a second visit; build's retry is a new task (visit 2).
        queue = cluster.queue
        assert await queue.get(f"{NS}/echo-retry", task_id("uid-flaky", "plan", 2, 0, 0)) is None
        retried = await queue.get(f"{NS}/gate-retry", task_id("uid-flaky", "build", 2, 0, 0))
        assert retried is not None
        assert retried.state is TaskState.SUCCEEDED
        await cluster.eventually(lambda: cluster.events("flaky", "Retrying"))


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


async def test_a_missing_pool_holds_the_workflow_with_pool_not_found_until_it_exists(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    async with agents(redis_url, {f"{NS}/echo-nopool": ("echo", {})}), running(operator_env) as cluster:
        await cluster.create("no-pool", chain("echo-nopool", "one"), declare_pools=False)
        await cluster.eventually(
            lambda: (_condition(cluster.status("no-pool"), "PoolNotFound") or {}).get("status") == "True"
        )
        assert cluster.phase("no-pool") == "Pending"
        assert f"{NS}/echo-nopool" in (_condition(cluster.status("no-pool"), "PoolNotFound") or {})["message"]
        await cluster.eventually(lambda: cluster.events("no-pool", "PoolNotFound"))
        await cluster.create_pool(
            "echo-nopool", {"role": "no-pool", "image": "agent:1", "handler": {"kind": "echo"}}
        )
        await cluster.eventually(lambda: cluster.phase("no-pool") == "Succeeded", timeout=30)
        assert (_condition(cluster.status("no-pool"), "PoolNotFound") or {})["status"] == "False"


async def test_an_approval_annotation_decides_the_waiting_step(
    operator_env: kmock.KubernetesEmulator, redis_url: str
) -> None:
    spec = {
        "steps": [
            {"name": "gate", "kind": "approval", "message": "go?"},
            {"name": "after", "pool": "echo-gate"},
        ],
        "edges": [{"from": "gate", "to": "after", "when": "result.approved"}],
    }
    async with agents(redis_url, {f"{NS}/echo-gate": ("echo", {})}), running(operator_env) as cluster:
        await cluster.create("gated", spec)

        def gate() -> dict[str, Any]:
            return next((s for s in cluster.status("gated").get("steps") or [] if s["name"] == "gate"), {})

        await cluster.eventually(lambda: gate().get("phase") == "Waiting")
        assert gate()["message"] == "go?"
        assert cluster.status("gated")["currentStep"] == "gate"
        await cluster.patch("gated", {"metadata": {"annotations": {"approval.codeforge.ai/gate": "approve"}}})
        await cluster.eventually(lambda: cluster.phase("gated") == "Succeeded")
        assert gate()["approval"]["decision"] == "approved"
        assert gate()["approval"]["by"] == "annotation"
        assert cluster.status("gated")["result"]["gate"]["approved"] is True


async def test_a_workflow_that_timed_out_is_retried_with_a_new_deadline(
    operator_env: kmock.KubernetesEmulator, redis_url: str, tmp_path: Path
) -> None:
    marker, log = tmp_path / "fixed", tmp_path / "runs.log"
    pools = {
        f"{NS}/echo-late": ("echo", {}),
        f"{NS}/wait-late": ("python", {"pythonFunction": "support.retry_agents:slow_until_marker"}),
    }
    spec = {
        "timeoutSeconds": 2,
        "steps": [
            {"name": "plan", "pool": "echo-late"},
            {
                "name": "build",
                "pool": "wait-late",
                "params": {"marker": str(marker), "log": str(log), "seconds": 3},
            },
        ],
        "edges": [{"from": "plan", "to": "build"}],
    }
    timed_out = "workflow timed out after 2s (spec.timeoutSeconds)"
    async with agents(redis_url, pools), running(operator_env) as cluster:
        await cluster.create("late", spec)
        await cluster.eventually(lambda: cluster.phase("late") == "Failed")
        assert cluster.status("late")["message"] == timed_out

        # Still broken: the retry runs build again under a deadline of its own (not the spent one).
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await cluster.patch("late", {"metadata": {"annotations": {"codeforge.ai/retry": "1"}}})
        await cluster.eventually(lambda: cluster.status("late").get("retryToken") == "1")
        await cluster.eventually(lambda: cluster.phase("late") == "Failed")
        assert loop.time() - asked >= 1.9
        assert cluster.status("late")["message"] == timed_out

        marker.write_text("ok")
        await cluster.patch("late", {"metadata": {"annotations": {"codeforge.ai/retry": "2"}}})
        await cluster.eventually(lambda: cluster.phase("late") == "Succeeded")
        status = cluster.status("late")
        assert status["retries"] == 2
        steps = {s["name"]: s for s in status["steps"]}
        assert (steps["plan"]["visits"], steps["build"]["visits"]) == (1, 3)
        assert status["result"]["build"]["run"] == 3
        assert [line.split()[0] for line in log.read_text().splitlines()] == [
            task_id("uid-late", "build", visit, 0, 0) for visit in (1, 2, 3)
        ]
        assert await cluster.queue.get(f"{NS}/echo-late", task_id("uid-late", "plan", 2, 0, 0)) is None
