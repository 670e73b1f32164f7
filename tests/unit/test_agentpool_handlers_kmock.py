"""The AgentPool handlers, run by a real Kopf operator against kmock's Kubernetes emulator.

kmock keeps objects in memory and serves lists, watches and merge patches; it runs no Deployment controller,
so pods and their states are created by the tests where needed. The queue is the in-memory backend the
operator opens from `memory://` (reached through the operator's memo).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import kmock
import pytest
from prometheus_client import REGISTRY

from codeforge.api.task import Task
from codeforge.controller.agentpool import builders
from codeforge.queue import TaskQueue
from support.kopf_harness import DEPLOYMENTS, NS, POOLS, Cluster, prepare, running

pytestmark = pytest.mark.timeout(60)

#: Seconds `cluster.eventually` waits by default.
TIMEOUT = 10.0

Operator = Callable[[], AbstractAsyncContextManager[Cluster]]


@pytest.fixture
def operator(kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Operator:
    """`async with operator() as cluster:` runs Kopf with our handlers against the emulator, in the test's
    own task (see `support.kopf_harness`)."""
    prepare(kmock, tmp_path, monkeypatch, "memory://")
    return lambda: running(kmock, timeout=TIMEOUT)


SPEC: dict[str, Any] = {
    "role": "research",
    "image": "agent:1",
    "handler": {"kind": "echo"},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 20, "targetTasksPerAgent": 2},
}


async def enqueue(queue: TaskQueue, pool: str, count: int) -> None:
    await queue.enqueue_many([Task(id=f"t{i}", pool=f"{NS}/{pool}") for i in range(count)])


async def test_create_builds_owned_objects_and_reports_status(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("research", SPEC)
        deployment = await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "research"))
        assert deployment["spec"]["replicas"] == 2
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-agentpool-research"
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["CODEFORGE_POOL"] == f"{NS}/research"
        assert await cluster.eventually(lambda: cluster.find("v1/services", "research-metrics"))
        assert await cluster.eventually(lambda: cluster.find("policy/v1/poddisruptionbudgets", "research"))

        def status() -> Any:
            pool = cluster.find(POOLS, "research")
            return pool and pool.get("status", {}).get("conditions") and pool["status"]

        reported = await cluster.eventually(status)
        assert reported["desiredReplicas"] == 2
        assert reported["selector"] == "codeforge.ai/pool=research"
        assert {c["type"]: c["reason"] for c in reported["conditions"]}["Ready"] == "AgentsNotReady"
        # Kopf's bookkeeping stays in annotations, out of the strict status.
        assert not any(key.startswith("kopf") for key in reported)


async def test_queue_burst_scales_the_deployment_and_posts_an_event(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("burst", SPEC)
        await cluster.eventually(lambda: cluster.replicas("burst") == 2)
        await enqueue(cluster.queue, "burst", 15)
        await cluster.eventually(lambda: cluster.replicas("burst") == 8)  # ceil(15 / 2)
        events = await cluster.eventually(lambda: cluster.stored_events("ScaledUp"))
        assert "from 2 to 8" in events[0]["message"]
        status = await cluster.eventually(
            lambda: (cluster.find(POOLS, "burst") or {}).get("status", {}).get("queued")
        )
        assert status == 15
        labels = {"pool": f"{NS}/burst"}
        assert REGISTRY.get_sample_value("codeforge_queue_depth", labels) == 15
        assert (
            REGISTRY.get_sample_value("codeforge_scale_decisions_total", {**labels, "direction": "up"}) == 1
        )


async def test_drift_on_the_deployment_is_corrected(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("drift", SPEC)
        await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "drift"))
        patch = {
            "spec": {
                "replicas": 9,
                "template": {"spec": {"containers": [{"name": "agent", "image": "evil:1"}]}},
            }
        }
        await cluster.request("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/drift", patch)

        def repaired() -> bool:
            deployment = cluster.find(DEPLOYMENTS, "drift") or {}
            containers = (
                deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])
            )
            return bool(
                deployment.get("spec", {}).get("replicas") == 2 and containers[0].get("image") == "agent:1"
            )

        await cluster.eventually(repaired)


async def test_external_mode_follows_spec_replicas_and_ignores_the_queue(operator: Operator) -> None:
    async with operator() as cluster:
        spec = {**SPEC, "replicas": 7, "autoscaling": {**SPEC["autoscaling"], "mode": "external"}}
        await cluster.create_pool("hpa", spec)
        await cluster.eventually(lambda: cluster.replicas("hpa") == 7)
        await enqueue(cluster.queue, "hpa", 30)
        await asyncio.sleep(2.5)  # two autoscaler ticks
        assert cluster.replicas("hpa") == 7


async def test_invalid_spec_is_reported_and_the_operator_keeps_working(operator: Operator) -> None:
    async with operator() as cluster:
        bad = {**SPEC, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}
        await cluster.create_pool("broken", bad)

        def invalid() -> Any:
            conditions = (cluster.find(POOLS, "broken") or {}).get("status", {}).get("conditions", [])
            return [c for c in conditions if c["type"] == "Degraded" and c["reason"] == "InvalidSpec"]

        (condition,) = await cluster.eventually(invalid)
        assert "spec.autoscaling" in condition["message"]
        assert cluster.find(DEPLOYMENTS, "broken") is None
        await cluster.create_pool("healthy", SPEC)
        await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "healthy"))


async def test_scale_in_makes_idle_agents_cheapest_to_delete(operator: Operator) -> None:
    async with operator() as cluster:
        spec = {
            **SPEC,
            "autoscaling": {**SPEC["autoscaling"], "scaleDown": {"stabilizationWindowSeconds": 1}},
        }
        await cluster.create_pool("shrink", spec)
        await enqueue(cluster.queue, "shrink", 8)
        await cluster.eventually(lambda: cluster.replicas("shrink") == 4)
        for pod in ("shrink-a", "shrink-b", "shrink-c", "shrink-d"):
            await cluster.request(
                "POST",
                f"/api/v1/namespaces/{NS}/pods",
                {"metadata": {"name": pod, "namespace": NS, "labels": builders.selector_labels("shrink")}},
            )
        await cluster.queue.set_consumer_state(f"{NS}/shrink", "shrink-a", "busy", ttl=60)
        await cluster.queue.set_consumer_state(f"{NS}/shrink", "shrink-b", "idle", ttl=60)
        # Drain the queue: agents a (busy) and b (idle) report; c and d report nothing.
        for _ in range(8):
            lease = await cluster.queue.claim(f"{NS}/shrink", "shrink-a")
            assert lease is not None
            await cluster.queue.complete(lease)
        await cluster.eventually(lambda: cluster.replicas("shrink") == 2)

        def cost(pod: str) -> int:
            annotations = (cluster.find("v1/pods", pod) or {}).get("metadata", {}).get("annotations", {})
            return int(annotations[builders.POD_DELETION_COST])

        assert cost("shrink-c") < cost("shrink-b") < cost("shrink-a")
        assert await cluster.eventually(lambda: cluster.stored_events("ScaledDown"))


async def test_image_pull_failures_degrade_the_pool_with_a_warning_event(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("pull", SPEC)
        await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "pull"))
        waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "agent:1"'}
        pod = {
            "metadata": {"name": "pull-x", "namespace": NS, "labels": builders.selector_labels("pull")},
            "status": {
                "containerStatuses": [{"name": "agent", "ready": False, "state": {"waiting": waiting}}]
            },
        }
        await cluster.request("POST", f"/api/v1/namespaces/{NS}/pods", pod)

        def degraded() -> Any:
            conditions = (cluster.find(POOLS, "pull") or {}).get("status", {}).get("conditions", [])
            return [c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"]

        (condition,) = await cluster.eventually(degraded)
        assert condition["reason"] == "ImagePullFailed"
        assert "pull-x: ImagePullBackOff" in condition["message"]
        (event,) = await cluster.eventually(lambda: cluster.stored_events("ImagePullFailed"))
        assert event["type"] == "Warning"
        assert (cluster.find(POOLS, "pull") or {})["status"]["phase"] == "Degraded"


async def test_unreachable_queue_holds_replicas_and_says_so(
    kmock: kmock.KubernetesEmulator, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from codeforge.controller import services
    from codeforge.controller.config import OperatorConfig

    monkeypatch.setattr(services, "CONFIG", OperatorConfig(queue_url="redis://127.0.0.1:1/0"))
    async with running(kmock, with_queue=False, timeout=TIMEOUT) as cluster:
        await cluster.create_pool("blind", SPEC)

        def unreachable() -> Any:
            conditions = (cluster.find(POOLS, "blind") or {}).get("status", {}).get("conditions", [])
            return [c for c in conditions if c["reason"] == "QueueUnreachable"]

        (condition,) = await cluster.eventually(unreachable)
        assert "redis://127.0.0.1:1/0" in condition["message"]
        assert cluster.replicas("blind") == 2  # created at minReplicas and held there


async def test_a_deleted_deployment_is_recreated(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("phoenix", SPEC)
        first = await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "phoenix"))
        await cluster.request("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/phoenix")
        assert cluster.find(DEPLOYMENTS, "phoenix") is None
        again = await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "phoenix"))
        assert again["spec"] == first["spec"]


async def test_tasks_held_back_by_max_concurrency_are_shown_and_not_scaled_for(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool("capped", SPEC)
        await cluster.eventually(lambda: cluster.replicas("capped") == 2)
        tasks = [Task(id=f"t{i}", pool=f"{NS}/capped", workflow="w", max_concurrency=4) for i in range(40)]
        await cluster.queue.enqueue_many(tasks)
        for _ in range(4):
            assert await cluster.queue.claim(f"{NS}/capped", "agent-0", timeout=0) is not None

        def counts() -> Any:
            status = (cluster.find(POOLS, "capped") or {}).get("status", {})
            return status.get("heldBack") == 36 and (status["queued"], status["inFlight"])

        assert await cluster.eventually(counts) == (0, 4)
        await asyncio.sleep(1.5)  # a few autoscaler ticks: 4 in flight at 2 per agent, not 40
        assert cluster.replicas("capped") == 2


async def test_pools_of_a_namespace_declaring_one_key_differently_are_told(operator: Operator) -> None:
    async with operator() as cluster:
        await cluster.create_pool(
            "writer", {**SPEC, "rateLimit": {"key": "team/model", "requestsPerMinute": 60}}
        )
        await cluster.eventually(lambda: cluster.find(DEPLOYMENTS, "writer"))
        await cluster.create_pool(
            "tester", {**SPEC, "rateLimit": {"key": "team/model", "requestsPerMinute": 600}}
        )

        def rate_condition(name: str) -> Any:
            pool = cluster.find(POOLS, name) or {}
            found = [c for c in pool.get("status", {}).get("conditions", []) if c["type"] == "RateLimit"]
            return found and found[0]["reason"] == "Conflict" and found[0]

        condition = await cluster.eventually(lambda: rate_condition("tester"))
        assert condition["status"] == "False"
        assert f"AgentPool {NS}/tester: 600 rpm" in condition["message"]
        assert f"AgentPool {NS}/writer: 60 rpm" in condition["message"]
        assert await cluster.eventually(lambda: rate_condition("writer"))  # told on its next reconcile too
        events = await cluster.eventually(lambda: cluster.stored_events("RateLimitConflict"))
        assert "declare the same numbers" in events[0]["message"]
