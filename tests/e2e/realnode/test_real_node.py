"""The chart as users run it, in real pods: `helm install` with the locally built images, then kubectl only.

One session-wide control plane with one kwok node and one real node (tests/e2e/realnode/conftest.py). A
release with standalone Redis serves most tests (module-scoped, in install order); the Redis Cluster mode gets
a release of its own; the last test upgrades and uninstalls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cluster import LocalControlPlane
from cluster.processes import wait_until
from cluster.real_node import (
    REAL_NODE,
    Release,
    agent_pool,
    install,
    ready_operators,
    running_on_real_node,
    sleep_workflow,
    wait_pool_ready,
    wait_workflow,
)
from cluster.resources import EXAMPLES_DIR, documents, dump

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def standalone(
    real_cluster: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    yield from install(real_cluster, tmp_path_factory.mktemp("helm"), "rn-standalone", mode="standalone")


# --- the node -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # the session's control plane and real node start first
def test_the_real_node_joins_beside_kwok_and_pretend_pods_stay_off_it(
    real_cluster: LocalControlPlane,
) -> None:
    nodes = {n["metadata"]["name"]: n for n in real_cluster.kubectl_json("get", "nodes")["items"]}
    assert set(nodes) == {REAL_NODE, "kwok-node-0"}, sorted(nodes)
    real = nodes[REAL_NODE]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == real_cluster.info["KUBERNETES_VERSION"]
    assert real["metadata"]["labels"]["codeforge.io/node"] == "real"
    assert {t["key"] for t in real["spec"].get("taints", [])} == {"codeforge.io/real-node"}
    addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
    assert addresses["InternalIP"] == real_cluster.info["NODE_IP"]

    # A pod that asks for nothing lands on kwok (the taint keeps it off the real node).
    pretend = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pretend", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "nothing-pulls-this:1"}]}}  # fmt: skip
    real_cluster.kubectl("apply", "-f", "-", input=dump([pretend]))
    try:

        def scheduled() -> dict[str, Any] | None:
            pod: dict[str, Any] = real_cluster.kubectl_json("get", "pod", "pretend", "-n", "default")
            return pod if pod["spec"].get("nodeName") else None

        pod = wait_until(scheduled, timeout=30, what="the pretend pod scheduled")
        assert pod["spec"]["nodeName"] == "kwok-node-0"
    finally:
        real_cluster.kubectl("delete", "pod", "pretend", "-n", "default", "--grace-period=0", "--force",
                             check=False)  # fmt: skip


# --- the chart with standalone Redis ------------------------------------------------------------------------


def test_helm_install_runs_the_operator_and_redis_in_real_pods(standalone: Release) -> None:
    operators = standalone.pods("app.kubernetes.io/component=operator")
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
    redis = standalone.pods("app.kubernetes.io/component=redis")
    assert len(redis) == 1
    for pod in operators + redis:
        assert running_on_real_node(pod), (
            pod["metadata"]["name"],
            pod["spec"].get("nodeName"),
            pod["status"],
        )
        for container in pod["spec"]["containers"]:
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, container["name"]
            assert security.get("allowPrivilegeEscalation") is False, container["name"]
    deployment = standalone.json("get", "deployment", "-l", "app.kubernetes.io/component=operator")["items"][
        0
    ]
    assert deployment["status"].get("readyReplicas") == 2


def test_agent_pods_run_the_example_workflow_to_succeeded_and_kubectl_logs_shows_them(
    standalone: Release,
) -> None:
    images = standalone.cluster.info
    # examples/workflows/hello-world.yaml as shipped, its `echo` pool placed on the real node with our image.
    docs = documents(EXAMPLES_DIR / "workflows" / "hello-world.yaml")
    for doc in docs:
        if doc["kind"] == "AgentPool":
            spec = agent_pool(doc["metadata"]["name"], images["AGENT_IMAGE"], "echo")["spec"]
            doc["spec"] = {**spec, **doc["spec"]}
    standalone.apply(*docs)
    done = wait_workflow(standalone, "hello-world")
    assert done["status"]["progress"] == "1/1"
    assert done["status"]["result"]["hello"]["input"] == "hello, world"  # the echo agent's answer

    # A chain of three steps on a `sleep` pool.
    standalone.apply(agent_pool("sleepy", images["AGENT_IMAGE"], "sleep"))
    standalone.apply(sleep_workflow("chain", "sleepy", ["plan", "build", "check"], seconds=1))
    chain = wait_workflow(standalone, "chain")
    assert [(s["name"], s["phase"], s["attempts"]) for s in chain["status"]["steps"]] == [
        ("plan", "Succeeded", 1), ("build", "Succeeded", 1), ("check", "Succeeded", 1),
    ]  # fmt: skip

    # `kubectl logs` of the agent pods (through the kubelet of the real node) shows the task they ran.
    uid = done["metadata"]["uid"]
    logs = "".join(
        standalone.kubectl("logs", pod["metadata"]["name"])
        for pod in standalone.pods("codeforge.ai/pool=echo")
    )
    assert uid in logs, logs[-2000:]


# --- scale-in and operator failover -------------------------------------------------------------------------


def claimed_by(release: Release, pool: str, uid: str) -> str | None:
    """The agent pod whose log shows it claimed a task of the Workflow with this uid (kubectl logs)."""
    for pod in release.pods(f"codeforge.ai/pool={pool}"):
        name = pod["metadata"]["name"]
        if uid in release.kubectl("logs", name, check=False):
            return str(name)
    return None


def test_scale_in_removes_idle_agents_first_and_the_busy_one_keeps_its_task(standalone: Release) -> None:
    image = standalone.cluster.info["AGENT_IMAGE"]
    # External mode: replicas follow spec.replicas (the scale subresource), as with an HPA or KEDA.
    standalone.apply(agent_pool("scaler", image, "sleep", autoscaling={"mode": "external"}, replicas=3))
    before = {p["metadata"]["name"] for p in wait_pool_ready(standalone, "scaler", 3)}

    standalone.apply(sleep_workflow("long", "scaler", ["work"], seconds=40))
    uid = standalone.json("get", "workflow", "long")["metadata"]["uid"]
    busy = wait_until(
        lambda: claimed_by(standalone, "scaler", uid), timeout=60, interval=1,
        what="an agent claiming the task", detail=standalone.diagnose,
    )  # fmt: skip

    standalone.kubectl("scale", "agentpool", "scaler", "--replicas=1")

    def scaled_in() -> list[str] | None:
        names = [p["metadata"]["name"] for p in standalone.pods("codeforge.ai/pool=scaler")]
        return names if len(names) == 1 else None

    remaining = wait_until(
        scaled_in, timeout=90, interval=1, what="the pool at 1 pod", detail=standalone.diagnose
    )
    assert remaining == [busy], f"busy {busy}, idle {sorted(before - {busy})}, left {remaining}"

    done = wait_workflow(standalone, "long", timeout=120)
    (step,) = done["status"]["steps"]
    assert (step["phase"], step["attempts"]) == ("Succeeded", 1), step


def test_force_deleting_the_active_operator_mid_workflow(standalone: Release) -> None:
    image = standalone.cluster.info["AGENT_IMAGE"]
    standalone.apply(agent_pool("sleepy", image, "sleep"))
    standalone.apply(sleep_workflow("failover", "sleepy", ["one", "two", "three", "four"], seconds=4))
    wait_until(
        lambda: standalone.json("get", "workflow", "failover").get("status", {}).get("phase") == "Running",
        timeout=60, interval=0.5, what="Workflow failover Running", detail=standalone.diagnose,
    )  # fmt: skip

    # The active replica is the one that handles the Workflow: its log names it.
    operators = [p["metadata"]["name"] for p in standalone.pods("app.kubernetes.io/component=operator")]
    active = [name for name in operators if "failover" in standalone.kubectl("logs", name, check=False)]
    assert len(active) == 1, {
        name: standalone.kubectl("logs", name, check=False)[-1500:] for name in operators
    }
    standalone.kubectl("delete", "pod", active[0], "--force", "--grace-period=0")

    done = wait_workflow(standalone, "failover", timeout=240)
    assert [(s["name"], s["phase"]) for s in done["status"]["steps"]] == [
        ("one", "Succeeded"), ("two", "Succeeded"), ("three", "Succeeded"), ("four", "Succeeded"),
    ]  # fmt: skip
    # The Deployment replaced the deleted pod: two replicas again, both on the real node.
    pods = wait_until(
        lambda: ready_operators(standalone), timeout=120, interval=1, what="two ready operators again"
    )
    assert active[0] not in {p["metadata"]["name"] for p in pods}
