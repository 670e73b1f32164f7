"""High availability end to end: two operator replicas with Kopf peering on the local control plane.

Both replicas (one `codeforge operator`, one `kopf run -m codeforge.controller`) watch the same namespace and
use the same Redis, with peering mandatory on a ClusterKopfPeering (as the chart deploys them; the test
creates the peering object the chart would create). Each takes a random priority: the higher one is active,
the lower one pauses. A Workflow of short steps starts; while both run only the active one works on it.
The active one is then killed with SIGKILL mid-run: the standby waits until the dead peer's keep-alive
record expires (the peering lifetime, 15 s here), resumes, and finishes the Workflow from its checkpoint,
running no step twice.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.processes import AgentProcess, OperatorProcess, has_operator_command, running_agents, wait_until
from cluster.resources import dump, install_crds, temporary_namespace
from codeforge.orchestrator import task_id
from codeforge.queue.local_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

#: The peering lifetime (CODEFORGE_PEERING_LIFETIME): a peer not seen for this long is dead.
PEERING_LIFETIME = 15
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)  # ours and Kopf's peering CRDs (helm/codeforge/crds)
    # Until the API server lists them without "storage is (re)initializing" (429): an operator whose first
    # LIST is retried past its pause would still get (and handle) that late listing, see `handled`.
    wait_until(
        lambda: all(
            control_plane.kubectl("get", kind, "-A", check=False).returncode == 0
            for kind in ("workflows", "agentpools", "clusterkopfpeerings")
        ),
        timeout=60, what="the CRDs listed",
    )  # fmt: skip
    with temporary_namespace(control_plane, "e2e-ha") as name:
        pool = {
            "apiVersion": "codeforge.ai/v1alpha1",
            "kind": "AgentPool",
            "metadata": {"name": "sleepy"},
            "spec": {
                "role": "sleepy",
                "image": "registry.invalid/codeforge/agent:e2e",
                "handler": {"kind": "sleep"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        }
        control_plane.kubectl("apply", "--namespace", name, "-f", "-", input=dump([pool]))
        yield name


@pytest.fixture(scope="module")
def peering(control_plane: Cluster, namespace: str) -> Iterator[str]:
    """A ClusterKopfPeering of this test only (the chart creates one named after the release)."""
    name = f"codeforge-e2e-{uuid.uuid4().hex[:6]}"
    obj = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    control_plane.kubectl("apply", "-f", "-", input=dump([obj]))
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "clusterkopfpeering", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-failover")


@pytest.fixture(scope="module")
def agent(namespace: str, redis_server: LocalRedis, log_dir: Path) -> Iterator[AgentProcess]:
    with running_agents(
        f"{namespace}/sleepy", redis_server.url, log_dir, handler="sleep", concurrency="4"
    ) as agents:
        yield agents[0]


@pytest.fixture
def replicas(
    control_plane: Cluster,
    namespace: str,
    peering: str,
    redis_server: LocalRedis,
    log_dir: Path,
    agent: AgentProcess,
) -> Iterator[dict[str, OperatorProcess]]:
    """Two operator replicas with peering on, as the chart runs them (POD_ID names each peer, as the
    Deployment's downward API does); started together, before any Workflow exists."""
    entrypoints = {"operator-a": "codeforge" if has_operator_command() else "kopf", "operator-b": "kopf"}
    processes = {
        pod: OperatorProcess(
            kubeconfig=control_plane.kubeconfig,
            queue_url=redis_server.url,
            namespaces=[namespace],
            log_path=log_dir / f"{pod}.log",
            entrypoint=entrypoint,
            env={
                "CODEFORGE_PEERING": "mandatory",
                "CODEFORGE_PEERING_NAME": peering,
                "CODEFORGE_PEERING_CLUSTERWIDE": "true",
                "CODEFORGE_PEERING_LIFETIME": str(PEERING_LIFETIME),
                "POD_ID": pod,
                # `codeforge operator` logs Kopf's full format (as `kopf run` does): lines name their object.
                "CODEFORGE_LOG_FORMAT": "full",
            },
        )
        for pod, entrypoint in entrypoints.items()
    }
    try:
        for process in processes.values():
            process.launch()

        def up() -> bool:
            for process in processes.values():
                if not process.alive:
                    raise AssertionError(f"an operator exited during startup\n{process.tail()}")
            return all(process.healthy() for process in processes.values())

        wait_until(up, timeout=60, interval=0.2, what="both operators' liveness")
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def peers(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    """The peering object's records: identity -> {priority, lifetime, lastseen}."""
    obj = cluster.kubectl_json("get", "clusterkopfpeering", name)
    status: dict[str, dict[str, Any]] = obj.get("status") or {}
    return status


def workflow(name: str, pool: str, steps: list[str], seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "input": {"n": 1},
            "steps": [{"name": s, "pool": pool, "params": {"seconds": seconds}} for s in steps],
            "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(steps)],
        },
    }


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "workflow", name, "--namespace", namespace)
    return obj


def handled(process: OperatorProcess, handler: str = "") -> list[str]:
    """The operator's log lines about handling objects (Kopf's `kopf.objects` logger: handlers, daemons and
    what they log), of one handler if given. The namespace holds one Workflow, so `validate_workflow` and
    `run_workflow` lines are about it.

    A paused replica handles nothing, with one Kopf caveat (kopf#1266): a LIST already in flight when it
    pauses is still handled (its daemons are stopped at once). The namespace fixture waits until the CRDs
    list cleanly, so the replicas' first LISTs are not retried into the time the Workflow exists."""
    return [line for line in process.log().splitlines() if "kopf.objects" in line and f"'{handler}" in line]


def is_active(process: OperatorProcess) -> bool:
    """Whether the replica works: Kopf starts a mandatory-peering operator paused and logs each change, so
    it works when its last peering change was a resume."""
    changes = [line for line in process.log().splitlines() if PAUSED in line or RESUMED in line]
    return bool(changes) and RESUMED in changes[-1]


def claims(agent: AgentProcess, uid: str) -> list[str]:
    return re.findall(rf"claimed .*?task_id=({re.escape(uid)}/\S+)", agent.log())


def test_standby_takes_over_a_running_workflow_when_the_active_replica_dies(
    control_plane: Cluster,
    namespace: str,
    peering: str,
    replicas: dict[str, OperatorProcess],
    agent: AgentProcess,
) -> None:
    def logs() -> str:
        return "\n".join(p.tail(40) for p in replicas.values())

    # Both replicas keep their record in the peering object; the lower priority one pauses.
    def both_recorded() -> dict[str, dict[str, Any]] | None:
        found = peers(control_plane, peering)
        return found if found.keys() >= set(replicas) else None

    records = wait_until(
        both_recorded, timeout=30, interval=0.3, what="both replicas in the peering object", detail=logs
    )
    active_id, standby_id = sorted(replicas, key=lambda pod: int(records[pod]["priority"]), reverse=True)
    assert records[active_id]["priority"] != records[standby_id]["priority"], records
    active, standby = replicas[active_id], replicas[standby_id]
    wait_until(
        lambda: is_active(active) and not is_active(standby),
        timeout=30, interval=0.3, what=f"{active_id} active, {standby_id} paused", detail=logs,
    )  # fmt: skip
    # Two replicas started at the same moment may both act until each has seen the other's peering record
    # (the pool may be reconciled by either then); from here on the standby must do nothing.
    settled = len(handled(standby))

    steps = [f"s{i}" for i in range(6)]
    control_plane.kubectl(
        "apply", "--namespace", namespace, "-f", "-",
        input=dump([workflow("failover", "sleepy", steps, seconds=1.5)]),
    )  # fmt: skip

    def midway() -> dict[str, Any] | None:
        # 2/6 or 3/6: a step is in flight and at least two more are to come.
        current = get(control_plane, namespace, "failover")
        return current if current.get("status", {}).get("progress") in ("2/6", "3/6") else None

    obj = wait_until(
        midway, timeout=60, interval=0.2, what="failover at 2/6 or 3/6",
        detail=lambda: f"{get(control_plane, namespace, 'failover').get('status')}\n{logs()}",
    )  # fmt: skip
    uid = obj["metadata"]["uid"]

    # While both run, only the active replica works on the Workflow: the standby stays paused.
    assert handled(active, "validate_workflow"), active.tail()
    assert handled(standby)[settled:] == [], standby.tail()  # no object at all since it paused
    assert is_active(active), active.tail()
    assert not is_active(standby), standby.tail()

    active.kill()  # SIGKILL mid-run: no cleanup, its peering record stays until it expires
    killed_at = time.monotonic()
    assert get(control_plane, namespace, "failover")["status"]["phase"] == "Running"
    assert active_id in peers(control_plane, peering)

    wait_until(
        lambda: is_active(standby), timeout=PEERING_LIFETIME + 20, interval=0.5,
        what=f"{standby_id} resumed", detail=standby.tail,
    )  # fmt: skip
    took_over = time.monotonic() - killed_at

    def succeeded() -> dict[str, Any] | None:
        current = get(control_plane, namespace, "failover")
        return current if current.get("status", {}).get("phase") == "Succeeded" else None

    done = wait_until(
        succeeded, timeout=60, interval=0.3, what="failover Succeeded",
        detail=lambda: f"{get(control_plane, namespace, 'failover').get('status')}\n{standby.tail()}",
    )  # fmt: skip
    finished = time.monotonic() - killed_at
    print(f"\nstandby resumed {took_over:.1f}s and finished {finished:.1f}s after the active one was killed")

    # The standby finished the run from its checkpoint; the dead peer's record was cleaned up.
    assert handled(standby, "validate_workflow"), standby.tail()
    wait_until(
        lambda: handled(standby, "run_workflow"), timeout=15, what="the standby's run daemon done",
        detail=standby.tail,
    )  # fmt: skip
    assert set(peers(control_plane, peering)) == {standby_id}
    assert done["status"]["progress"] == "6/6"
    assert [(s["name"], s["phase"], s["attempts"]) for s in done["status"]["steps"]] == [
        (name, "Succeeded", 1) for name in steps
    ]
    # Each step ran once: one task per step, each claimed once by the pool's only agent.
    claimed = claims(agent, uid)
    assert sorted(claimed) == sorted(task_id(uid, name, 1, 0, 0) for name in steps), claimed

    # Deleted while the survivor runs, so its finalizer is not left behind.
    control_plane.kubectl("delete", "workflow", "failover", "--namespace", namespace, "--timeout=60s")
