"""`helm install` of the chart on a real API server, and a server-side dry run of every example.

The local control plane has no volume provisioner and no container runtime: Redis runs without persistent
volumes here (`redis.persistence.enabled=false`), and kwok makes the chart's pods Running and Ready and
completes the Redis Cluster init Job's pod. What this proves is that every object the chart renders is
accepted by a v1.37 API server (schemas, RBAC escalation checks, CRD validation) and wired so that the
controllers bring it up: Deployments, StatefulSets, the post-install hook Job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster
from cluster.resources import (
    CHART_DIR,
    EXAMPLES_DIR,
    documents,
    dump,
    install_crds,
    parse_documents,
    temporary_namespace,
)

pytestmark = [pytest.mark.slow]

OUR_GROUP = "codeforge.ai/"
#: Examples may show third-party objects next to ours (a KEDA ScaledObject); their CRDs are not ours.
THIRD_PARTY_GROUPS = ("keda.sh/",)

INSTALLS = {
    # The defaults: a 6-node Redis Cluster formed by the post-install Job, cluster-wide RBAC.
    "cluster-redis": ["--set", "redis.persistence.enabled=false"],
    # One Redis, RBAC confined to the release namespace, and the example AgentPools of the values.
    "standalone-namespaced": [
        f"--set={value}"
        for value in (
            "redis.mode=standalone",
            "redis.persistence.enabled=false",
            "rbac.scope=namespaced",
            "examplePools.enabled=true",
        )
    ],
}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
EXPECTED_PODS = {"cluster-redis": 2 + 6, "standalone-namespaced": 2 + 1}


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


@pytest.fixture(params=sorted(INSTALLS))
def release(request: pytest.FixtureRequest, control_plane: Cluster) -> Iterator[tuple[str, str, str]]:
    """A release of the chart in its own namespace: (variant, release name, namespace); uninstalled after."""
    variant: str = request.param
    name = f"cf-{uuid.uuid4().hex[:5]}"
    with temporary_namespace(control_plane, "e2e-chart") as namespace:
        control_plane.helm(
            "install", name, str(CHART_DIR), "--namespace", namespace,
            "--wait", "--wait-for-jobs", "--timeout", "180s", *INSTALLS[variant],
        )  # fmt: skip
        try:
            yield variant, name, namespace
        finally:
            control_plane.helm(
                "uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s", check=False
            )
            # Cluster-scoped objects (ClusterRole, ClusterRoleBinding) must go with the release.
            leftovers = control_plane.kubectl(
                "get",
                "clusterroles,clusterrolebindings",
                "-l",
                f"app.kubernetes.io/instance={name}",
                "-o",
                "name",
            ).stdout.split()
            assert leftovers == [], f"uninstall left {leftovers}"


def test_helm_install_creates_every_object_and_its_pods_become_ready(
    control_plane: Cluster, release: tuple[str, str, str]
) -> None:
    variant, name, namespace = release
    manifest = control_plane.helm("get", "manifest", name, "--namespace", namespace).stdout
    rendered = parse_documents(manifest)
    assert rendered, "the release has no objects"

    # Every rendered object exists on the API server (kubectl resolves each kind through discovery).
    found = json.loads(control_plane.kubectl("get", "-f", "-", "-o", "json", input=manifest).stdout)
    items = found["items"] if found.get("kind") == "List" else [found]
    rendered_keys = {
        (k, "" if k in CLUSTER_KINDS else ns or namespace, n) for k, ns, n in map(_key, rendered)
    }
    live_keys = {_key(item) for item in items}
    assert live_keys == rendered_keys

    # The post-install hook (the Redis Cluster init Job) ran and succeeded.
    status = json.loads(control_plane.helm("status", name, "--namespace", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    hooks = {h["name"]: h.get("last_run", {}).get("phase") for h in status.get("hooks", [])}
    if variant == "cluster-redis":
        assert any(n.endswith("redis-cluster-init") for n in hooks), hooks
    assert all(phase == "Succeeded" for phase in hooks.values()), hooks

    # kwok plays the kubelet: every pod of the chart is scheduled on a fake node, Running and Ready.
    pods = control_plane.kubectl_json("get", "pods", "--namespace", namespace)["items"]
    assert len(pods) == EXPECTED_PODS[variant], [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert pod["spec"].get("nodeName"), pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert _ready(pod), pod["metadata"]["name"]
        # The chart's pods are non-root with read-only root filesystems (the API server kept what we sent).
        for container in pod["spec"]["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, pod["metadata"]["name"]

    workloads = control_plane.kubectl_json("get", "deployments,statefulsets", "--namespace", namespace)[
        "items"
    ]
    for workload in workloads:
        spec_replicas = workload["spec"]["replicas"]
        assert workload["status"].get("readyReplicas") == spec_replicas, _key(workload)
    operator = [w for w in workloads if w["kind"] == "Deployment"]
    assert [w["spec"]["replicas"] for w in operator] == [2]  # two replicas, one active (leader election)

    if variant == "standalone-namespaced":
        pools = control_plane.kubectl_json("get", "agentpools", "--namespace", namespace)["items"]
        assert pools, "examplePools.enabled=true rendered no AgentPool"


def _example_files() -> list[Path]:
    return sorted([*EXAMPLES_DIR.glob("agentpools/*.yaml"), *EXAMPLES_DIR.glob("workflows/*.yaml")])


def test_every_example_passes_a_server_side_dry_run(control_plane: Cluster) -> None:
    install_crds(control_plane)
    checked: list[str] = []
    with temporary_namespace(control_plane, "e2e-examples") as namespace:
        for path in _example_files():
            ours = [d for d in documents(path) if d["apiVersion"].startswith(OUR_GROUP)]
            others = [d for d in documents(path) if not d["apiVersion"].startswith(OUR_GROUP)]
            assert all(d["apiVersion"].startswith(THIRD_PARTY_GROUPS) for d in others), path
            assert ours, f"{path} holds no AgentPool or Workflow"
            result = control_plane.kubectl(
                "apply",
                "--dry-run=server",
                "--namespace",
                namespace,
                "-f",
                "-",
                input=dump(ours),
                check=False,
            )
            assert result.returncode == 0, (
                f"{path.relative_to(EXAMPLES_DIR)}:\n{result.stdout}{result.stderr}"
            )
            checked += [f"{d['kind']}/{d['metadata']['name']}" for d in ours]
        # The chart's own example pools (values.yaml examplePools) are examples too.
        rendered = control_plane.helm(
            "template", "cf", str(CHART_DIR), "--namespace", namespace, "--set", "examplePools.enabled=true"
        ).stdout
        pools = [d for d in parse_documents(rendered) if d["kind"] == "AgentPool"]
        assert pools
        result = control_plane.kubectl(
            "apply", "--dry-run=server", "--namespace", namespace, "-f", "-", input=dump(pools), check=False
        )
        assert result.returncode == 0, f"chart examplePools:\n{result.stdout}{result.stderr}"
    kinds = {c.split("/")[0] for c in checked}
    assert kinds == {"AgentPool", "Workflow"}, checked
