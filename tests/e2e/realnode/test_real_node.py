"""The chart as users run it, in real pods: `helm install` with the locally built images, then kubectl only.

One session-wide control plane with one kwok node and one real node (tests/e2e/realnode/conftest.py). A
release with standalone Redis serves most tests (module-scoped, in install order); the Redis Cluster mode gets
a release of its own; the last test upgrades and uninstalls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster, LocalControlPlane
from cluster.processes import wait_until
from cluster.real_node import REAL_NODE_LABEL, REAL_NODE_TOLERATION
from cluster.resources import CHART_DIR, EXAMPLES_DIR, documents, dump

pytestmark = [pytest.mark.slow]

REAL_NODE = "real-node-0"


@dataclass
class Release:
    name: str
    namespace: str
    cluster: LocalControlPlane

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.cluster.kubectl(*args, "--namespace", self.namespace, timeout=timeout, check=check).stdout

    def json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args, "--namespace", self.namespace)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "--namespace", self.namespace, "-f", "-", input=dump(list(docs)))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("get", "pods", "-l", selector)["items"]
        return items

    def diagnose(self) -> str:
        """What a person would look at when something does not come up."""
        return "\n".join(
            self.kubectl(*args, check=False)
            for args in (("get", "pods,jobs,agentpools,workflows", "-o", "wide"), ("get", "events"))
        )


def helm_values(images: dict[str, str], tmp: Path, **redis: Any) -> Path:
    """Values that put every pod of the chart on the real node, with the images built by hack/images.sh."""
    placement = {"nodeSelector": REAL_NODE_LABEL, "tolerations": [REAL_NODE_TOLERATION]}

    def image(ref: str) -> dict[str, str]:
        repository, _, tag = ref.rpartition(":")
        return {"repository": repository, "tag": tag, "pullPolicy": "Never"}

    values = {
        "operator": {
            "image": image(images["OPERATOR_IMAGE"]),
            "logFormat": "full",
            **placement,
        },
        "redis": {
            "image": image(images["REDIS_IMAGE"]),
            "persistence": {"enabled": False},
            **placement,
            **redis,
        },
        "agent": {"image": image(images["AGENT_IMAGE"])},
    }
    path = tmp / f"values-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(values))
    return path


def install(
    real_cluster: LocalControlPlane, tmp: Path, prefix: str, **redis: Any
) -> Iterator[Release]:
    namespace = f"{prefix}-{uuid.uuid4().hex[:5]}"
    name = "cf"
    release = Release(name, namespace, real_cluster)
    values = helm_values(real_cluster.info, tmp, **redis)
    started = time.monotonic()
    out = real_cluster.helm(
        "install", name, str(CHART_DIR), "--namespace", namespace, "--create-namespace",
        "--values", str(values), "--set", f"operator.watchNamespaces={{{namespace}}}",
        "--wait", "--wait-for-jobs", "--timeout", "240s",
        timeout=300, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.fail(f"helm install failed:\n{out.stdout}{out.stderr}\n{release.diagnose()}", pytrace=False)
    print(f"helm install ({prefix}) took {time.monotonic() - started:.0f}s")
    try:
        yield release
    finally:
        real_cluster.helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "120s", check=False)
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def standalone(real_cluster: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    yield from install(real_cluster, tmp_path_factory.mktemp("helm"), "rn-standalone", mode="standalone")


def agent_pool(name: str, image: str, handler: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "role": name,
            "image": image,
            "imagePullPolicy": "Never",
            "handler": {"kind": handler},
            "nodeSelector": REAL_NODE_LABEL,
            "tolerations": [REAL_NODE_TOLERATION],
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            "terminationGracePeriodSeconds": 60,
            **spec,
        },
    }


def sleep_workflow(name: str, pool: str, steps: list[str], seconds: float) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "input": {"n": 1},
            "steps": [{"name": s, "pool": pool, "params": {"seconds": seconds}} for s in steps],
            "edges": [{"from": a, "to": b} for a, b in zip(steps, steps[1:], strict=False)],
        },
    }


def wait_workflow(release: Release, name: str, want: str = "Succeeded", timeout: float = 180) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj: dict[str, Any] = release.json("get", "workflow", name)
        phase = obj.get("status", {}).get("phase")
        if phase == "Failed" and want != "Failed":
            raise AssertionError(f"Workflow {name} failed: {obj.get('status')}")
        return obj if phase == want else None

    return wait_until(
        reached, timeout=timeout, interval=1, what=f"Workflow {name} {want}", detail=release.diagnose
    )


def running_on_real_node(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return (
        pod["spec"].get("nodeName") == REAL_NODE
        and bool(statuses)
        and all(s.get("containerID", "").startswith("containerd://") and s.get("ready") for s in statuses)
    )


def wait_pool_ready(release: Release, pool: str, replicas: int, timeout: float = 120) -> list[dict[str, Any]]:
    selector = f"codeforge.ai/pool={pool}"

    def ready() -> list[dict[str, Any]] | None:
        pods = [p for p in release.pods(selector) if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == replicas and all(map(running_on_real_node, pods)) else None

    return wait_until(ready, timeout=timeout, interval=1, what=f"{replicas} ready agents of {pool}",
                      detail=release.diagnose)  # fmt: skip


# --- the node ----------------------------------------------------------------------------------------------------


def test_the_real_node_joins_beside_kwok_and_pretend_pods_stay_off_it(real_cluster: LocalControlPlane) -> None:
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


# --- the chart with standalone Redis -------------------------------------------------------------------------------


def test_helm_install_runs_the_operator_and_redis_in_real_pods(standalone: Release) -> None:
    operators = standalone.pods("app.kubernetes.io/component=operator")
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]
    redis = standalone.pods("app.kubernetes.io/component=redis")
    assert len(redis) == 1
    for pod in operators + redis:
        assert running_on_real_node(pod), (pod["metadata"]["name"], pod["spec"].get("nodeName"), pod["status"])
        for container in pod["spec"]["containers"]:
            security = container.get("securityContext", {})
            assert security.get("readOnlyRootFilesystem") is True, container["name"]
            assert security.get("allowPrivilegeEscalation") is False, container["name"]
    deployment = standalone.json("get", "deployment", "-l", "app.kubernetes.io/component=operator")["items"][0]
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
        standalone.kubectl("logs", pod["metadata"]["name"]) for pod in standalone.pods("codeforge.ai/pool=echo")
    )
    assert uid in logs, logs[-2000:]
