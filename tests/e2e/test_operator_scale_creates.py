"""`bench/operator_scale.py`'s creating client on the real API server: every Workflow is created, and with
`--create-rate` the creates are spread at that rate (an offered load below the operator's capacity)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from cluster import Cluster
from cluster.resources import install_crds, temporary_namespace
from support.bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("operator_scale")


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)
    with temporary_namespace(control_plane, "e2e-creates") as name:
        yield name


def test_paced_creates_are_spread_at_the_rate_and_all_made(
    bench: ModuleType, control_plane: Cluster, namespace: str
) -> None:
    count, rate = 12, 5.0
    durations = bench.step_durations(count, len(bench.STEPS), 1.0, 0.0)
    created = bench.create_all(control_plane.kubeconfig, namespace, durations, 8, rate)

    assert len(created) == count
    names = control_plane.kubectl("get", "workflows", "-n", namespace, "-o", "name").stdout.split()
    assert len(names) == count
    # The last create is not sent before (count - 1) / rate = 2.2 s after the first, however many may be in
    # flight (8 here); the first's own round trip (a new connection) is allowed for. Unpaced, the 12 creates
    # returned within 10 ms of each other on the local API server.
    returned = sorted(created.values())
    assert returned[-1] - returned[0] >= (count - 1) / rate - 0.5
