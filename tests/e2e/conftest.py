"""End-to-end fixtures: a real Kubernetes control plane for the whole session.

By default the session starts its own local control plane (hack/cluster/up.sh in a private directory under
pytest's tmp dir), building its binaries first when this machine has not built them yet (the first build takes
tens of minutes on 2 cores; later runs start in seconds), and stops it at the end.

To run the suite against an existing cluster instead (kind, see hack/kind.sh, or any other), opt in with
`CODEFORGE_E2E_EXISTING_CLUSTER=1` and point `KUBECONFIG` at it; that cluster is never started or stopped.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

import cluster
from cluster.control_plane import default_cache
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis

EXISTING_CLUSTER_ENV = "CODEFORGE_E2E_EXISTING_CLUSTER"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a Kubernetes cluster (the local control plane by default)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in item.nodeid.replace(os.sep, "/") or item.nodeid.startswith("e2e/"):
            item.add_marker(pytest.mark.e2e)


def _wants_local_control_plane(session: pytest.Session) -> bool:
    if os.environ.get(EXISTING_CLUSTER_ENV) == "1" or session.config.option.collectonly:
        return False
    return any("control_plane" in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control plane before the first test, outside any test's timeout (a cold build is long)."""
    if not _wants_local_control_plane(session):
        return
    if cluster.binaries_built() or shutil.which("go") is None:
        return  # nothing to do, or the fixture skips with the reason
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(
            f"\n>> building the local control plane into {cluster.bin_dir_for(default_cache())} "
            "(first run on this machine only: tens of minutes on 2 cores)",
            file=sys.stderr,
            flush=True,
        )
        cluster.build_binaries(output=sys.stderr)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Cluster]:
    """The cluster of this session: `.kubeconfig`, `.kubectl(...)`, `.helm(...)`, `.env()`."""
    if os.environ.get(EXISTING_CLUSTER_ENV) == "1":
        try:
            existing = cluster.ExistingCluster.from_env()
        except cluster.ClusterError as exc:
            pytest.fail(f"{EXISTING_CLUSTER_ENV}=1: {exc}", pytrace=False)
        yield existing
        return

    plane = cluster.LocalControlPlane(state_dir=tmp_path_factory.mktemp("control-plane"), nodes=3)
    if not plane.is_built():
        # pytest_collection_finish builds it when Go is here; so Go is missing (or the build failed).
        go = cluster.pinned_versions()["GO_MIN_VERSION"]
        pytest.skip(
            f"the local control plane is not built ({plane.bin_dir}) and Go {go}+ is missing to build it "
            f"(make cluster-build); or set {EXISTING_CLUSTER_ENV}=1 and KUBECONFIG to use an existing cluster"
        )
    try:
        plane.start()
    except cluster.ClusterError as exc:
        pytest.fail(f"the local control plane did not start:\n{exc}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
async def queue(redis_server: LocalRedis) -> AsyncIterator[TaskQueue]:
    """A client of the session's queue (the one the operator and the agents of the tests use)."""
    opened = await open_queue(redis_server.url)
    yield opened
    await opened.close()
