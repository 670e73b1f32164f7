"""High availability end to end: two operator replicas with leader election on the local control plane.

Both replicas (one `codeforge operator`, one `kopf run -m codeforge.controller`, the image's entrypoint) watch
the same namespace, use the same Redis and compete for one Lease with the default timings (15 s lease, 10 s
renew deadline, 2 s retry), as the chart runs them. Only the holder runs Kopf at all: the standby handles no
object, not even while both start. A Workflow of short steps starts, then the leader goes:

- SIGKILL (a node dies): nothing is released, so the standby takes over once the Lease has not been renewed
  for 15 s, and finishes the Workflow from its checkpoint;
- SIGTERM (a rolling update, a drain): the leader stops Kopf, releases the Lease, and the standby takes over
  at its next poll.

Either way every step runs exactly once. The takeover times are printed (and quoted in the README).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.processes import (
    AgentProcess,
    OperatorProcess,
    has_operator_command,
    running_agents,
    start_together,
    wait_until,
)
from cluster.resources import dump, install_crds, sleep_workflow, temporary_namespace
from codeforge.orchestrator import task_id
from codeforge.testing.redis_server import LocalRedis

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

LEASE = "codeforge-e2e"
#: The defaults of the operator and the chart (controller-runtime's).
LEASE_DURATION, RETRY_PERIOD = 15, 2
STEPS = [f"s{i}" for i in range(6)]


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    # Until the API server lists them without "storage is (re)initializing" (429).
    wait_until(
        lambda: all(
            control_plane.kubectl("get", kind, "-A", check=False).returncode == 0
            for kind in ("workflows", "agentpools")
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
    request: pytest.FixtureRequest,
    control_plane: Cluster,
    namespace: str,
    redis_server: LocalRedis,
    log_dir: Path,
    agent: AgentProcess,
) -> Iterator[dict[str, OperatorProcess]]:
    """Two replicas with leader election on, as the chart runs them (POD_ID names each, as the Deployment's
    downward API does); started together, before any Workflow exists."""
    entrypoints = {"operator-a": "codeforge" if has_operator_command() else "kopf", "operator-b": "kopf"}
    test = request.node.name[-12:]
    processes = {
        pod: OperatorProcess(
            kubeconfig=control_plane.kubeconfig,
            queue_url=redis_server.url,
            namespaces=[namespace],
            log_path=log_dir / f"{pod}-{test}.log",
            entrypoint=entrypoint,
            env={
                "CODEFORGE_LEADER_ELECTION": "true",
                "CODEFORGE_LEASE_NAME": LEASE,
                "CODEFORGE_LEASE_NAMESPACE": namespace,
                "POD_ID": pod,
                # `codeforge operator` logs Kopf's full format (as `kopf run` does): lines name their object.
                "CODEFORGE_LOG_FORMAT": "full",
            },
        )
        for pod, entrypoint in entrypoints.items()
    }
    try:
        start_together(list(processes.values()))
        yield processes
    finally:
        for process in processes.values():
            process.stop()
        # The next test's replicas start without a predecessor's Lease to wait out.
        control_plane.kubectl("delete", "lease", LEASE, "--namespace", namespace, check=False)


def holder(cluster: Cluster, namespace: str) -> str:
    result = cluster.kubectl(
        "get", "lease", LEASE, "--namespace", namespace, "-o", "jsonpath={.spec.holderIdentity}", check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def leads(process: OperatorProcess) -> bool:
    """Kopf answers the liveness probe once the replica acts (`leader: true`); a standby answers false."""
    return (process.probe() or {}).get("leader") is True


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "workflow", name, "--namespace", namespace)
    return obj


def handled(process: OperatorProcess, handler: str = "") -> list[str]:
    """The operator's log lines about handling objects (Kopf's `kopf.objects` logger: handlers, daemons and
    what they log), of one handler if given."""
    return [line for line in process.log().splitlines() if "kopf.objects" in line and f"'{handler}" in line]


def runs(process: OperatorProcess, namespace: str, name: str) -> list[str]:
    """The operator's lines saying it starts or resumes the run of Workflow `namespace/name`."""
    workflow = re.escape(f"{namespace}/{name}")
    return re.findall(rf"Workflow {workflow} run (starts|resumes)$", process.log(), re.MULTILINE)


def claims(agent: AgentProcess, uid: str) -> list[str]:
    return re.findall(rf"claimed .*?task_id=({re.escape(uid)}/\S+)", agent.log())


def elect(
    cluster: Cluster, namespace: str, replicas: dict[str, OperatorProcess]
) -> tuple[OperatorProcess, OperatorProcess]:
    """(leader, standby), once one holds the Lease and acts while the other stands by."""

    def logs() -> str:
        return "\n".join(p.tail(40) for p in replicas.values())

    def settled() -> tuple[OperatorProcess, OperatorProcess] | None:
        acting = [pod for pod, process in replicas.items() if leads(process)]
        current = holder(cluster, namespace)
        if len(acting) != 1 or not current.startswith(f"{acting[0]}_"):
            return None
        (standby_id,) = set(replicas) - set(acting)
        return replicas[acting[0]], replicas[standby_id]

    leader, standby = wait_until(
        settled, timeout=60, interval=0.3, what="one replica leading, one standing by", detail=logs
    )
    # The standby reads the Lease on its own period: wait for it to name the holder.
    expected = {"leader": False, "holder": holder(cluster, namespace)}
    wait_until(
        lambda: standby.probe() == expected, timeout=15, interval=0.3, what="the standby naming the holder"
    )
    return leader, standby


def start_workflow(cluster: Cluster, namespace: str, name: str, logs: Any) -> str:
    cluster.kubectl(
        "apply", "--namespace", namespace, "-f", "-", input=dump([sleep_workflow(name, "sleepy", STEPS, 1.5)])
    )

    def midway() -> dict[str, Any] | None:
        # 2/6 or 3/6: a step is in flight and at least two more are to come.
        current = get(cluster, namespace, name)
        return current if current.get("status", {}).get("progress") in ("2/6", "3/6") else None

    obj = wait_until(
        midway, timeout=60, interval=0.2, what=f"{name} at 2/6 or 3/6",
        detail=lambda: f"{get(cluster, namespace, name).get('status')}\n{logs()}",
    )  # fmt: skip
    uid: str = obj["metadata"]["uid"]
    return uid


def take_over(
    cluster: Cluster, namespace: str, standby: OperatorProcess, since: float
) -> tuple[float, float]:
    """Seconds from `since` until the standby holds the Lease, and until it acts (Kopf running)."""
    identity = f"{standby.env['POD_ID']}_"

    def holds() -> bool:
        return holder(cluster, namespace).startswith(identity) or leads(standby)

    wait_until(
        holds, timeout=LEASE_DURATION + 15, interval=0.1, what="the standby holding the Lease",
        detail=standby.tail,
    )  # fmt: skip
    acquired = time.monotonic() - since
    wait_until(
        lambda: leads(standby), timeout=30, interval=0.1, what="the standby acting", detail=standby.tail
    )
    return acquired, time.monotonic() - since


def finish(
    cluster: Cluster, namespace: str, name: str, uid: str, survivor: OperatorProcess, agent: AgentProcess
) -> None:
    def succeeded() -> dict[str, Any] | None:
        current = get(cluster, namespace, name)
        return current if current.get("status", {}).get("phase") == "Succeeded" else None

    done = wait_until(
        succeeded, timeout=90, interval=0.3, what=f"{name} Succeeded",
        detail=lambda: f"{get(cluster, namespace, name).get('status')}\n{survivor.tail()}",
    )  # fmt: skip
    # The survivor picked the run up from its checkpoint, as a resumption, not a new start.
    assert runs(survivor, namespace, name) == ["resumes"], survivor.tail()
    assert done["status"]["progress"] == "6/6"
    assert [(s["name"], s["phase"], s["attempts"]) for s in done["status"]["steps"]] == [
        (step, "Succeeded", 1) for step in STEPS
    ]
    # Each step ran once: one task per step, each claimed once by the pool's only agent.
    claimed = claims(agent, uid)
    assert sorted(claimed) == sorted(task_id(uid, step, 1, 0, 0) for step in STEPS), claimed
    # Deleted while the survivor runs, so its finalizer is not left behind.
    cluster.kubectl("delete", "workflow", name, "--namespace", namespace, "--timeout=60s")


def test_standby_takes_over_within_the_lease_duration_when_the_leader_is_killed(
    control_plane: Cluster, namespace: str, replicas: dict[str, OperatorProcess], agent: AgentProcess
) -> None:
    leader, standby = elect(control_plane, namespace, replicas)
    # Only the leader runs Kopf: the standby has handled nothing, not even while both started.
    assert handled(standby) == [], standby.tail()
    uid = start_workflow(control_plane, namespace, "killed", lambda: leader.tail(40))
    assert runs(leader, namespace, "killed") == ["starts"], leader.tail()
    assert handled(standby) == [], standby.tail()

    leader.kill()  # SIGKILL mid-run: no cleanup; the Lease stays until it runs out
    killed = time.monotonic()
    assert get(control_plane, namespace, "killed")["status"]["phase"] == "Running"
    acquired, acting = take_over(control_plane, namespace, standby, killed)
    print(f"\nSIGKILL: the standby held the Lease {acquired:.1f}s and acted {acting:.1f}s after the kill")
    # Not before the Lease ran out (the last renewal was at most a retry period, plus its round trip, before
    # the kill) ...
    assert acquired >= LEASE_DURATION - RETRY_PERIOD - 0.5
    # ... and soon after: within about 15 s (the standby sees the last renewal up to a poll late).
    assert acting < 20

    finish(control_plane, namespace, "killed", uid, standby, agent)


def test_standby_takes_over_at_once_when_the_leader_shuts_down_gracefully(
    control_plane: Cluster, namespace: str, replicas: dict[str, OperatorProcess], agent: AgentProcess
) -> None:
    leader, standby = elect(control_plane, namespace, replicas)
    assert handled(standby) == [], standby.tail()
    uid = start_workflow(control_plane, namespace, "drained", lambda: leader.tail(40))

    assert leader.process is not None
    stopping = time.monotonic()
    leader.stop(grace=30)  # SIGTERM: Kopf stops its handlers, then the Lease is released
    stopped = time.monotonic() - stopping
    assert leader.process.returncode == 0, leader.tail()
    assert "released the Lease" in leader.log(), leader.tail()
    acquired, acting = take_over(control_plane, namespace, standby, stopping)
    print(
        f"\nSIGTERM: the leader stopped in {stopped:.1f}s; the standby held the Lease {acquired:.1f}s and "
        f"acted {acting:.1f}s after the signal"
    )
    # At the standby's next poll after the release, far sooner than the lease duration.
    assert acquired - stopped < RETRY_PERIOD * 1.2 + 1.5
    assert acting < LEASE_DURATION - RETRY_PERIOD

    finish(control_plane, namespace, "drained", uid, standby, agent)


def test_a_leader_whose_lease_is_taken_exits_at_once(
    control_plane: Cluster, namespace: str, redis_server: LocalRedis, log_dir: Path
) -> None:
    """A leader that finds another holder in the Lease stops acting at its next renewal, by exiting non-zero
    (Kubernetes restarts it as a standby), without a graceful stop in which handlers would go on writing."""
    process = OperatorProcess(
        kubeconfig=control_plane.kubeconfig,
        queue_url=redis_server.url,
        namespaces=[namespace],
        log_path=log_dir / "operator-lost.log",
        entrypoint="codeforge" if has_operator_command() else "kopf",
        env={
            "CODEFORGE_LEADER_ELECTION": "true",
            "CODEFORGE_LEASE_NAME": LEASE,
            "CODEFORGE_LEASE_NAMESPACE": namespace,
            "POD_ID": "operator-lost",
        },
    )
    try:
        process.start()
        wait_until(lambda: leads(process), timeout=30, interval=0.2, what="leading", detail=process.tail)
        # Another candidate holds it now (as if this one had been partitioned away and the Lease taken).
        patch = '{"spec": {"holderIdentity": "intruder"}}'
        control_plane.kubectl("patch", "lease", LEASE, "--namespace", namespace, "--type=merge", "-p", patch)
        taken = time.monotonic()
        wait_until(
            lambda: not process.alive, timeout=RETRY_PERIOD * 2 + 5, interval=0.1, what="the operator exited",
            detail=process.tail,
        )  # fmt: skip
        print(f"\nthe leader exited {time.monotonic() - taken:.1f}s after its Lease was taken")
        assert process.process is not None
        assert process.process.returncode == 1, process.tail()
        assert "leader election lost: the Lease is held by intruder" in process.log(), process.tail()
    finally:
        process.stop()
        control_plane.kubectl("delete", "lease", LEASE, "--namespace", namespace, check=False)


def test_a_standby_stops_at_once_on_sigterm(
    control_plane: Cluster, namespace: str, replicas: dict[str, OperatorProcess]
) -> None:
    """A standby (a rolling update replaces it first, or the pair is scaled down) holds nothing: it exits
    promptly, and the leader goes on leading."""
    leader, standby = elect(control_plane, namespace, replicas)
    assert standby.process is not None
    started = time.monotonic()
    standby.stop(grace=20)
    took = time.monotonic() - started
    print(f"\nthe standby exited {took:.1f}s after SIGTERM with status {standby.process.returncode}")
    assert standby.process.returncode == 0, standby.tail()
    assert took < 10, standby.tail()  # well within the pod's 30 s grace period
    assert leads(leader)
    assert holder(control_plane, namespace).startswith(f"{leader.env['POD_ID']}_")
