"""Day-2 behaviour end to end, on the local control plane with a real operator process, real Redis and real
agents: approval steps decided by `codeforge approve|reject` (the real entry point) routing through CEL,
surviving an operator restart, timing out; `ttlSecondsAfterFinished` removing the run's Redis keys (and the
Workflow when asked); a large result stored by reference and fetched; a missing AgentPool holding a
Workflow with `PoolNotFound` until the pool appears."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cluster import Cluster
from cluster.processes import AgentProcess, OperatorProcess, running_agents, wait_until
from cluster.resources import apply_docs as apply
from cluster.resources import dump, event_reasons, install_crds, pool_doc, temporary_namespace, wait_workflow
from cluster.resources import get_workflow as get
from cluster.resources import workflow_doc as workflow
from codeforge.orchestrator.results import ResultGone, fetch_result
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

CODEFORGE = Path(sys.executable).parent / "codeforge"
CHECKPOINT_PREFIX = "cf:cp"


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-day2") as name:
        control_plane.kubectl("apply", "--namespace", name, "-f", "-", input=dump([pool_doc("echo")]))
        yield name


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("day2-e2e")


@pytest.fixture(scope="module")
def agent(namespace: str, redis_server: LocalRedis, log_dir: Path) -> Iterator[AgentProcess]:
    with running_agents(f"{namespace}/echo", redis_server.url, log_dir, handler="echo", concurrency="4") as a:
        yield a[0]


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, log_dir: Path, agent: AgentProcess
) -> Iterator[OperatorProcess]:
    with OperatorProcess.for_namespace(
        control_plane, namespace, redis_server.url, log_dir / "operator.log", "codeforge"
    ) as process:
        yield process


def gated(timeout: float | None = None) -> dict[str, Any]:
    gate: dict[str, Any] = {"name": "gate", "kind": "approval", "message": "ship it?"}
    if timeout is not None:
        gate["timeoutSeconds"] = timeout
    return {
        "input": {"change": 1},
        "steps": [
            {"name": "build", "pool": "echo"},
            gate,
            {"name": "ship", "pool": "echo"},
            {"name": "rollback", "pool": "echo"},
        ],
        "edges": [
            {"from": "build", "to": "gate"},
            {"from": "gate", "to": "ship", "when": "result.approved"},
            {"from": "gate", "to": "rollback", "when": "!result.approved"},
        ],
    }


def step_status(obj: dict[str, Any], step: str) -> dict[str, Any]:
    return next((s for s in obj.get("status", {}).get("steps", []) if s["name"] == step), {})


def wait_for(cluster: Cluster, namespace: str, name: str, operator: OperatorProcess, check: Any, what: str,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    return wait_workflow(cluster, namespace, name, check, f": {what}", timeout=timeout, tail=operator.tail)


def waiting(obj: dict[str, Any]) -> bool:
    return step_status(obj, "gate").get("phase") == "Waiting"


def finished(obj: dict[str, Any]) -> bool:
    return obj.get("status", {}).get("phase") in ("Succeeded", "Failed")


def codeforge(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([str(CODEFORGE), *args], capture_output=True, text=True, timeout=180, env=env)


def whoami(cluster: Cluster) -> str:
    return str(cluster.kubectl_json("auth", "whoami")["status"]["userInfo"]["username"])


@pytest.mark.parametrize(
    ("verb", "approved", "next_step"), [("approve", True, "ship"), ("reject", False, "rollback")]
)
def test_codeforge_approve_and_reject_route_through_cel_and_record_who(
    control_plane: Cluster,
    namespace: str,
    operator: OperatorProcess,
    verb: str,
    approved: bool,
    next_step: str,
) -> None:
    name = f"gated-{verb}"
    apply(control_plane, namespace, workflow(name, gated()))
    obj = wait_for(control_plane, namespace, name, operator, waiting, "gate waiting")
    assert step_status(obj, "gate")["message"] == "ship it?"
    assert obj["status"]["phase"] == "Running"
    done = codeforge(control_plane, verb, name, "gate", "-n", namespace, "-m", "looked at it")
    user = whoami(control_plane)
    assert done.returncode == 0, done.stderr
    decided = "approved" if approved else "rejected"
    assert done.stdout.strip() == f"Workflow {namespace}/{name}: step gate (visit 1) {decided} by {user}"
    obj = wait_for(control_plane, namespace, name, operator, finished, "finished")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert [s["name"] for s in obj["status"]["steps"]] == ["build", "gate", next_step]
    decision = step_status(obj, "gate")["approval"]
    assert decision["decision"] == ("approved" if approved else "rejected")
    assert decision["by"] == user
    assert decision["message"] == "looked at it"
    assert obj["status"]["result"]["gate"]["approved"] is approved
    # Deciding again is refused with one clear line: the step no longer waits.
    again = codeforge(control_plane, verb, name, "gate", "-n", namespace)
    assert again.returncode == 1
    assert "step 'gate' is not waiting for a decision (Succeeded" in again.stderr or "(Failed" in again.stderr
    missing = codeforge(control_plane, "approve", "no-such-wf", "gate", "-n", namespace)
    assert missing.returncode == 1
    assert f"Workflow 'no-such-wf' not found in namespace {namespace!r}" in missing.stderr


def test_a_decision_made_while_the_operator_is_down_is_honoured_after_its_restart(
    control_plane: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    name = "gated-restart"
    apply(control_plane, namespace, workflow(name, gated()))
    wait_for(control_plane, namespace, name, operator, waiting, "gate waiting")
    operator.kill()
    try:
        done = codeforge(control_plane, "reject", name, "gate", "-n", namespace, "-m", "during the outage")
        assert done.returncode == 0, done.stderr
    finally:
        operator.start()
    obj = wait_for(control_plane, namespace, name, operator, finished, "finished")
    assert [s["name"] for s in obj["status"]["steps"]] == ["build", "gate", "rollback"]
    assert step_status(obj, "gate")["approval"]["message"] == "during the outage"
    assert step_status(obj, "build")["visits"] == 1


def test_an_approval_times_out(control_plane: Cluster, namespace: str, operator: OperatorProcess) -> None:
    name = "gated-timeout"
    apply(control_plane, namespace, workflow(name, gated(timeout=2)))
    obj = wait_for(control_plane, namespace, name, operator, finished, "finished")
    assert [s["name"] for s in obj["status"]["steps"]] == ["build", "gate", "rollback"]
    assert step_status(obj, "gate")["approval"]["decision"] == "timedOut"
    assert "within 2s" in step_status(obj, "gate")["message"]


async def redis_keys(url: str, uid: str) -> list[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return sorted([key.decode() async for key in client.scan_iter(match=f"*{uid}*", count=1000)])
    finally:
        await client.aclose()


def test_ttl_removes_checkpoints_and_the_result_copy_and_then_the_workflow(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, redis_server: LocalRedis
) -> None:
    big = {"input": {"report": "r" * 6000}, "steps": [{"name": "one", "pool": "echo"}]}
    apply(
        control_plane, namespace,
        # Long enough to look at its keys before they go (on a busy machine a kubectl call takes seconds).
        workflow("ttl-keep", {**big, "ttlSecondsAfterFinished": 20}),
        workflow("ttl-delete", {**big, "ttlSecondsAfterFinished": 3, "ttlDeletesWorkflow": True}),
        workflow("ttl-none", big),
    )  # fmt: skip
    other = wait_for(control_plane, namespace, "ttl-none", operator, finished, "finished")
    other_tasks = [
        k for k in asyncio.run(redis_keys(redis_server.url, other["metadata"]["uid"])) if ":t:" in k
    ]
    assert other_tasks, "the run without a TTL left no task record to keep"
    kept = wait_for(control_plane, namespace, "ttl-keep", operator, finished, "finished")
    assert kept["status"]["phase"] == "Succeeded"
    ref = kept["status"]["resultRef"]
    assert kept["status"].get("result") is None
    assert ref["sizeBytes"] > 6000
    fetched = asyncio.run(fetch_result(redis_server.url, ref))
    assert "r" * 6000 in json.dumps(fetched["one"])  # the echo agent's answer carries the input back
    uid = kept["metadata"]["uid"]
    assert [k for k in asyncio.run(redis_keys(redis_server.url, uid)) if f":t:{uid}/" in k], "no task record"

    def expired(obj: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Expired" and c["status"] == "True" for c in obj["status"].get("conditions", [])
        )

    obj = wait_for(control_plane, namespace, "ttl-keep", operator, expired, "Expired", timeout=60)
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"].get("resultRef") is None
    # Checkpoints, the result copy and the run's task records in the queue are gone; another run's stay.
    left = asyncio.run(redis_keys(redis_server.url, uid))
    assert [k for k in left if k.startswith((CHECKPOINT_PREFIX, "cf:wf:")) or f":t:{uid}/" in k] == [], left
    assert [k for k in asyncio.run(redis_keys(redis_server.url, other["metadata"]["uid"])) if ":t:" in k] == (
        other_tasks
    )
    with pytest.raises(ResultGone):
        asyncio.run(fetch_result(redis_server.url, ref))

    def gone() -> bool:
        out = control_plane.kubectl("get", "workflow", "ttl-delete", "-n", namespace, check=False)
        return out.returncode != 0 and "NotFound" in out.stderr

    wait_until(gone, timeout=30, interval=0.5, what="ttl-delete deleted", detail=operator.tail)


def test_a_missing_pool_holds_the_workflow_until_it_appears(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, redis_server: LocalRedis, log_dir: Path
) -> None:
    spec = {"input": {"n": 1}, "steps": [{"name": "one", "pool": "echo"}, {"name": "two", "pool": "later"}],
            "edges": [{"from": "one", "to": "two"}]}  # fmt: skip
    apply(control_plane, namespace, workflow("needs-later", spec))

    def pool_not_found(obj: dict[str, Any]) -> bool:
        return any(
            c["type"] == "PoolNotFound" and c["status"] == "True"
            for c in obj.get("status", {}).get("conditions", [])
        )

    obj = wait_for(control_plane, namespace, "needs-later", operator, pool_not_found, "PoolNotFound")
    assert obj["status"]["phase"] == "Pending"
    message = next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "PoolNotFound")
    assert f"{namespace}/later" in message
    assert "echo" not in message
    assert "PoolNotFound" in event_reasons(control_plane, namespace, "Workflow", "needs-later")
    time.sleep(1)
    assert get(control_plane, namespace, "needs-later")["status"]["phase"] == "Pending"
    with running_agents(f"{namespace}/later", redis_server.url, log_dir, handler="echo"):
        apply(control_plane, namespace, pool_doc("later"))
        obj = wait_for(control_plane, namespace, "needs-later", operator, finished, "finished", timeout=60)
    assert obj["status"]["phase"] == "Succeeded"
    assert not pool_not_found(obj)
    assert obj["status"]["result"]["two"]["step"] == "two"
