"""Smoke test of the Kubernetes control plane the e2e suite runs on.

The API server answers with the pinned version; a Deployment of 5 replicas goes through the real controller
manager and scheduler, and kwok makes its pods Running and Ready on fake nodes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import Cluster, pinned_versions

pytestmark = [pytest.mark.slow]


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


def test_api_server_answers_with_pinned_version(control_plane: Cluster) -> None:
    version = control_plane.kubectl_json("version")
    server = version["serverVersion"]
    if control_plane.is_local:
        pinned = pinned_versions()["KUBERNETES_VERSION"]
        assert server["gitVersion"] == pinned
        assert version["clientVersion"]["gitVersion"] == pinned
        assert f"v{server['major']}.{server['minor']}" == pinned.rsplit(".", 1)[0]
    else:
        assert server["gitVersion"].startswith("v1.")


def test_helm_is_the_pinned_version(control_plane: Cluster) -> None:
    if not control_plane.is_local:
        pytest.skip("an existing cluster brings its own helm")
    out = control_plane.helm("version", "--template", "{{ .Version }}").stdout.strip()
    assert out == pinned_versions()["HELM_VERSION"]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_deployment_pods_become_ready_on_kwok_nodes(control_plane: Cluster, namespace: str) -> None:
    control_plane.kubectl(
        "create", "deployment", "smoke", "--namespace", namespace,
        "--image=registry.invalid/codeforge/smoke:1", "--replicas=5",
    )  # fmt: skip
    started = time.monotonic()
    control_plane.kubectl("rollout", "status", "deployment/smoke", "--namespace", namespace, "--timeout=60s")
    elapsed = time.monotonic() - started

    pods = control_plane.kubectl_json("get", "pods", "--namespace", namespace, "-l", "app=smoke")["items"]
    assert len(pods) == 5
    for pod in pods:
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        assert _ready(pod), pod["metadata"]["name"]
        assert pod["spec"]["nodeName"], pod["metadata"]["name"]
    if control_plane.is_local:
        nodes = {n["metadata"]["name"]: n for n in control_plane.kubectl_json("get", "nodes")["items"]}
        for pod in pods:
            node = nodes[pod["spec"]["nodeName"]]
            assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert elapsed < 30, f"5 kwok pods took {elapsed:.1f}s to become Ready"

    deployment = control_plane.kubectl_json("get", "deployment", "smoke", "--namespace", namespace)
    assert deployment["status"]["readyReplicas"] == 5
