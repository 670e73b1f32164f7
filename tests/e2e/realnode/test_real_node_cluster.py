"""The chart's default Redis mode in real pods: a 6-node Redis Cluster formed by the chart's init Job
(names resolved by CoreDNS, traffic through kube-proxy), a Workflow on it, then upgrade and uninstall."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import LocalControlPlane
from cluster.processes import wait_until
from cluster.real_node import (
    Release,
    agent_pool,
    install,
    ready_operators,
    running_on_real_node,
    wait_workflow,
)
from cluster.resources import CHART_DIR, sleep_workflow

pytestmark = [pytest.mark.slow]

REDIS = "app.kubernetes.io/component=redis"
OPERATOR = "app.kubernetes.io/component=operator"


@pytest.fixture(scope="module")
def clustered(real_cluster: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    yield from install(real_cluster, tmp_path_factory.mktemp("helm"), "rn-cluster", mode="cluster")


def cluster_info(release: Release) -> dict[str, str]:
    """`redis-cli cluster info` in the first Redis pod (kubectl exec through the real node's kubelet)."""
    pod = sorted(p["metadata"]["name"] for p in release.pods(REDIS))[0]
    out = release.kubectl("exec", pod, "--", "redis-cli", "--no-auth-warning", "cluster", "info")
    return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)


@pytest.mark.timeout(600)  # the release is installed first (six Redis pods and the init Job)
def test_the_init_job_forms_a_six_node_redis_cluster_in_real_pods(clustered: Release) -> None:
    pods = clustered.pods(REDIS)
    assert len(pods) == 6, [p["metadata"]["name"] for p in pods]
    assert all(map(running_on_real_node, pods))
    info = cluster_info(clustered)
    assert info["cluster_state"] == "ok", info
    assert info["cluster_known_nodes"] == "6", info
    assert info["cluster_size"] == "3", info  # three masters, one replica each
    # The nodes announce their stable DNS names (CoreDNS answers for the headless Service).
    pod = sorted(p["metadata"]["name"] for p in pods)[0]
    nodes = clustered.kubectl("exec", pod, "--", "redis-cli", "--no-auth-warning", "cluster", "nodes")
    assert ".svc.cluster.local" in nodes, nodes


def test_a_workflow_runs_on_the_redis_cluster(clustered: Release) -> None:
    image = clustered.cluster.info["AGENT_IMAGE"]
    clustered.apply(agent_pool("sleepy", image, "sleep"))
    clustered.apply(sleep_workflow("on-cluster", "sleepy", ["a", "b"], seconds=1))
    done = wait_workflow(clustered, "on-cluster")
    assert done["status"]["progress"] == "2/2"


@pytest.mark.timeout(600)  # an upgrade (with its hook Job) and an uninstall that waits for every pod to go
def test_helm_upgrade_then_uninstall_leaves_nothing_behind(clustered: Release) -> None:
    cluster = clustered.cluster
    before = {p["metadata"]["name"] for p in clustered.pods(OPERATOR)}
    cluster.helm(
        "upgrade", clustered.name, str(CHART_DIR), "--namespace", clustered.namespace, "--reuse-values",
        "--set", "operator.logLevel=verbose", "--wait", "--wait-for-jobs", "--timeout", "240s", timeout=300,
    )  # fmt: skip
    status = json.loads(
        cluster.helm("status", clustered.name, "-n", clustered.namespace, "-o", "json").stdout
    )
    assert (status["version"], status["info"]["status"]) == (2, "deployed")
    # The operator pods rolled (new pod template), Redis kept its data and its cluster (the post-upgrade Job
    # checked it).
    after = wait_until(
        lambda: ready_operators(clustered),
        timeout=120,
        interval=1,
        what="two ready operators after the upgrade",
    )
    assert not before & {p["metadata"]["name"] for p in after}
    assert cluster_info(clustered)["cluster_state"] == "ok"

    cluster.helm(
        "uninstall", clustered.name, "--namespace", clustered.namespace, "--wait", "--timeout", "120s"
    )

    def gone() -> bool:
        left: dict[str, Any] = cluster.kubectl_json(
            "get",
            "all,configmaps,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets,jobs",
            "--namespace", clustered.namespace, "-l", f"app.kubernetes.io/instance={clustered.name}",
        )  # fmt: skip
        pods = cluster.kubectl_json("get", "pods", "--namespace", clustered.namespace)["items"]
        # AgentPools the test made are not the chart's: their agents go with them, not with the release.
        chart_pods = [p for p in pods if "codeforge.ai/pool" not in p["metadata"].get("labels", {})]
        return not left["items"] and not chart_pods

    wait_until(gone, timeout=120, interval=1, what="nothing of the release left", detail=clustered.diagnose)
    cluster_scoped = cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-o", "name",
        "-l", f"app.kubernetes.io/instance={clustered.name}",
    ).stdout.split()  # fmt: skip
    assert cluster_scoped == []
