"""The real-node suite: the chart installed with `helm install` on the local control plane plus one real node.

Everything runs in real pods on that node (kubelet, containerd, runc, a CNI bridge, kube-proxy, CoreDNS), from
the images that hack/images.sh builds from the repository's Dockerfiles; the tests only drive `helm` and
`kubectl`. The node and the images are built before the first test (outside its timeout) when missing; on a
machine that cannot run a real node every test here skips with one line saying why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cluster
from cluster.real_node import build_node_and_images, why_no_real_node

HERE = Path(__file__).parent


def _wants_real_node(session: pytest.Session) -> bool:
    if session.config.option.collectonly:
        return False
    return any(Path(str(item.path)).is_relative_to(HERE) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the node's binaries and the images before the first test (a cold build takes minutes)."""
    if not _wants_real_node(session) or why_no_real_node() is not None:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n>> real node: building its binaries and the images (no-ops once built)", file=sys.stderr)
        if not cluster.binaries_built():
            cluster.build_binaries(output=sys.stderr)
        build_node_and_images(output=sys.stderr)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.LocalControlPlane]:
    """A local control plane with one kwok node and the real node `real-node-0`, per test module: the node
    (kubelet, containerd, iptables chains) is a host singleton, so it goes as soon as its tests are done
    instead of staying up for the rest of the run (~45 s more per module)."""
    reason = why_no_real_node()
    if reason is not None:
        pytest.skip(f"real node: {reason}")
    plane = cluster.LocalControlPlane(state_dir=tmp_path_factory.mktemp("real-node"), nodes=1, real_node=True)
    if not plane.is_built():
        pytest.skip(f"real node: the control plane is not built ({plane.bin_dir}): make cluster-build")
    try:
        plane.start(timeout=600)
    except cluster.ClusterError as exc:
        pytest.fail(f"the control plane with a real node did not start:\n{exc}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop(timeout=180)
