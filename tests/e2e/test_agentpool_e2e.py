"""AgentPools end to end: the operator (a local `kopf run -m codeforge.controller` process) on the local
control plane, a real redis-server, real `codeforge-agent` processes, and the example AgentPools applied with
kubectl.

Pods never run here (kwok only writes their status), so the agents that drain the queue are local processes
serving the same pool queue the pods would serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.processes import OperatorProcess, running_agents, wait_until
from cluster.resources import (
    EXAMPLES_DIR,
    documents,
    dump,
    event_reasons,
    install_crds,
    label_agent_nodes,
    table,
    temporary_namespace,
)
from codeforge.api.task import Task, TaskState
from codeforge.queue import TaskQueue
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(600)]

BURST = 2000


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    label_agent_nodes(control_plane)
    with temporary_namespace(control_plane, "e2e-pools") as name:
        yield name


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess.for_namespace(control_plane, namespace, redis_server.url, log_path) as process:
        yield process


def apply_example_pools(cluster: Cluster, namespace: str) -> list[str]:
    """`kubectl apply -f` the AgentPools of examples/agentpools/ (a KEDA ScaledObject beside them is left out:
    KEDA is not installed here). Returns the pool names."""
    pools = [
        doc for path in sorted((EXAMPLES_DIR / "agentpools").glob("*.yaml")) for doc in documents(path)
        if doc["kind"] == "AgentPool"
    ]  # fmt: skip
    cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=dump(pools))
    return [pool["metadata"]["name"] for pool in pools]


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.kubectl_json("get", "deployment", name, "--namespace", namespace)
    return result


def replicas(cluster: Cluster, namespace: str, name: str) -> tuple[int, int]:
    """(spec.replicas, status.readyReplicas) of a Deployment, (-1, -1) while it does not exist."""
    out = cluster.kubectl(
        "get", "deployment", name, "--namespace", namespace,
        "-o", "jsonpath={.spec.replicas} {.status.readyReplicas}", check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return -1, -1
    spec, _, ready = out.stdout.partition(" ")
    return int(spec or 0), int(ready or 0)


def wait_for_replicas(
    cluster: Cluster,
    namespace: str,
    name: str,
    want: tuple[int, int],
    operator: OperatorProcess,
    timeout: float,
) -> None:
    wait_until(
        lambda: replicas(cluster, namespace, name) == want,
        timeout=timeout, interval=1.0, what=f"Deployment {name} at (replicas, ready) = {want}",
        detail=lambda: explain(cluster, namespace, name, operator),
    )  # fmt: skip


def pool_row(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    (row,) = table(cluster, "agentpools", name, "--namespace", namespace)
    return row


def explain(cluster: Cluster, namespace: str, name: str, operator: OperatorProcess) -> str:
    pools = cluster.kubectl("get", "agentpools", "--namespace", namespace, check=False).stdout
    deployments = cluster.kubectl("get", "deployments", "--namespace", namespace, check=False).stdout
    return f"{pools}\n{deployments}\n{operator.tail()}"


async def test_example_pools_get_deployments_and_live_printer_columns(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue
) -> None:
    names = apply_example_pools(control_plane, namespace)
    # The coding-agent CLI pools scale from zero (their agents cost money while idle).
    at_rest = {"research": (3, 3), "review": (3, 3), "claude-code": (0, 0), "codex": (0, 0)}
    assert sorted(names) == sorted(at_rest)

    for name in names:
        wait_for_replicas(control_plane, namespace, name, at_rest[name], operator, timeout=60)
        owned = deployment(control_plane, namespace, name)
        (owner,) = owned["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("AgentPool", name, True)
        # The agent container is configured for its pool's queue.
        env = {e["name"]: e.get("value") for e in owned["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["CODEFORGE_POOL"] == f"{namespace}/{name}"

    # The printer columns, as a user reads them, once the operator's next status write has seen the
    # Deployment ready (it refreshes a pool's status on its interval, not on every Deployment change).
    wait_until(
        lambda: pool_row(control_plane, namespace, "research")["READY"] == "3",
        timeout=30, what="research's READY column to reach 3",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip
    rows = {row["NAME"]: row for row in table(control_plane, "agentpools", "--namespace", namespace)}
    assert list(rows["research"]) == [
        "NAME", "ROLE", "MIN", "MAX", "DESIRED", "READY", "QUEUED", "IN-FLIGHT", "AGE",
    ]  # fmt: skip
    research = {k: v for k, v in rows["research"].items() if k not in ("NAME", "AGE")}
    assert research == {
        "ROLE": "research", "MIN": "3", "MAX": "500",
        "DESIRED": "3", "READY": "3", "QUEUED": "0", "IN-FLIGHT": "0",
    }  # fmt: skip

    # Live values: the review pool is left to an external autoscaler, so its queue moves no replica.
    pool = f"{namespace}/review"
    await queue.enqueue_many([Task(id=f"live-{i}", pool=pool) for i in range(5)])
    leases = [await queue.claim(pool, "e2e-test") for _ in range(2)]
    want = {"QUEUED": "3", "IN-FLIGHT": "2", "DESIRED": "3", "READY": "3"}
    wait_until(
        lambda: all(pool_row(control_plane, namespace, "review")[k] == v for k, v in want.items()),
        timeout=30, what=f"review's columns {want}",
        detail=lambda: explain(control_plane, namespace, "review", operator),
    )  # fmt: skip
    for lease in leases:
        assert lease is not None
        await queue.complete(lease, {"ok": True})
    for i in range(5):
        await queue.cancel(pool, f"live-{i}")  # the three still queued; completed ones stay completed

    # The scale subresource drives an externally autoscaled pool (what an HPA or KEDA does).
    control_plane.kubectl("scale", "agentpool", "review", "--replicas=7", "--namespace", namespace)
    wait_until(
        lambda: replicas(control_plane, namespace, "review") == (7, 7)
        and pool_row(control_plane, namespace, "review")["READY"] == "7",
        timeout=60, what="review scaled to 7 through the scale subresource",
        detail=lambda: explain(control_plane, namespace, "review", operator),
    )  # fmt: skip
    control_plane.kubectl("delete", "agentpool", "review", "--namespace", namespace)


async def test_a_burst_of_2000_tasks_scales_3_to_500_and_back(
    control_plane: Cluster, namespace: str, operator: OperatorProcess, queue: TaskQueue, tmp_path: Path
) -> None:
    if not control_plane.is_local:
        pytest.skip("500 agent pods need the local control plane's kwok nodes (pods that never really run)")
    apply_example_pools(control_plane, namespace)
    control_plane.kubectl("delete", "agentpool", "review", "--namespace", namespace, "--ignore-not-found")
    # The example keeps agents through 120 s lulls; a shorter window keeps this test short (same code path).
    control_plane.kubectl(
        "patch", "agentpool", "research", "--namespace", namespace, "--type=merge",
        "-p", '{"spec": {"autoscaling": {"scaleDown": {"stabilizationWindowSeconds": 5}}}}',
    )  # fmt: skip
    wait_until(
        lambda: replicas(control_plane, namespace, "research") == (3, 3),
        timeout=60, what="research at 3 Ready agents",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip

    pool = f"{namespace}/research"
    started = time.monotonic()
    await queue.enqueue_many([Task(id=f"burst-{i}", pool=pool) for i in range(BURST)])
    wait_until(
        lambda: replicas(control_plane, namespace, "research")[0] == 500,
        timeout=30, interval=0.1, what="Deployment research at 500 replicas",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip
    to_deployment = time.monotonic() - started
    wait_until(
        lambda: replicas(control_plane, namespace, "research") == (500, 500),
        timeout=180, interval=1.0, what="500 Ready agents",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip
    to_ready = time.monotonic() - started
    print(
        f"\nburst of {BURST}: Deployment at 500 after {to_deployment:.1f}s, 500 Ready after {to_ready:.1f}s"
    )
    assert to_deployment < 10, f"the burst reached the Deployment after {to_deployment:.1f}s"
    wait_until(
        lambda: {k: pool_row(control_plane, namespace, "research")[k] for k in ("DESIRED", "READY", "QUEUED")}
        == {"DESIRED": "500", "READY": "500", "QUEUED": str(BURST)},
        timeout=30, what="kubectl get agentpools showing the burst",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip
    ready_pods = control_plane.kubectl(
        "get", "pods", "--namespace", namespace, "-l", "codeforge.ai/pool=research",
        "--field-selector=status.phase=Running", "-o", "name",
    ).stdout.split()  # fmt: skip
    assert len(ready_pods) == 500

    # Drain: a few real agents work the queue off; then the pool goes back to its minimum.
    with running_agents(pool, operator.env["CODEFORGE_QUEUE_URL"], tmp_path, count=3, concurrency="50"):
        stats = await queue.stats(pool)

        async def drained() -> bool:
            nonlocal stats
            stats = await queue.stats(pool)
            return stats.queued == 0 and stats.in_flight == 0

        deadline = time.monotonic() + 120
        while not await drained():
            assert time.monotonic() < deadline, f"queue not drained: {stats}"
            await asyncio.sleep(0.5)
    assert stats.dead == 0
    for i in (0, BURST // 2, BURST - 1):
        outcome = await queue.get(pool, f"burst-{i}")
        assert outcome is not None
        assert outcome.state is TaskState.SUCCEEDED

    wait_until(
        lambda: replicas(control_plane, namespace, "research") == (3, 3),
        timeout=120, interval=1.0, what="research back to 3 Ready agents",
        detail=lambda: explain(control_plane, namespace, "research", operator),
    )  # fmt: skip
    wait_until(
        lambda: {k: pool_row(control_plane, namespace, "research")[k] for k in ("DESIRED", "READY", "QUEUED")}
        == {"DESIRED": "3", "READY": "3", "QUEUED": "0"},
        timeout=30, what="kubectl get agentpools back at 3",
    )  # fmt: skip
    reasons = event_reasons(control_plane, namespace, "AgentPool", "research")
    assert "ScaledUp" in reasons, reasons
    assert "ScaledDown" in reasons, reasons
