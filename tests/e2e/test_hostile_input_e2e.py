"""The API server itself refuses oversized Workflows and AgentPools, with the bounds the CRDs carry, so the
operator never sees them; the generated CRDs (with their CEL rules) pass the API server's cost budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import Cluster
from cluster.resources import install_crds, temporary_namespace
from cluster.resources import workflow_doc as workflow
from codeforge.api import limits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)  # fails when a CRD's CEL rules exceed the cost budget
    with temporary_namespace(control_plane, "e2e-hostile") as name:
        yield name


def pool(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": spec,
    }


def create(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> tuple[int, str]:
    out = cluster.kubectl(
        "create", "--namespace", namespace, "--validate=strict", "-f", "-", input=json.dumps(obj), check=False
    )
    return out.returncode, out.stderr


STEP = {"name": "a", "pool": "echo"}
HUGE_WHEN = "1" + " + 1" * 40_000  # the expression that crashed the CEL compiler


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"steps": [STEP], "edges": [{"from": "a", "to": "END", "when": HUGE_WHEN}]}, "spec.edges[0].when"),
        ({"steps": [{**STEP, "input": "x" * (limits.MAX_CEL_LENGTH + 1)}]}, "spec.steps[0].input"),
        ({"steps": [{**STEP, "name": f"s{i}"} for i in range(limits.MAX_STEPS + 1)]}, "spec.steps"),
        ({"steps": [{**STEP, "pool": "p" * (limits.MAX_POOL_NAME + 1)}]}, "spec.steps[0].pool"),
        ({"steps": [{**STEP, "params": {f"k{i}": i for i in range(limits.MAX_PARAMS_KEYS + 1)}}]}, "params"),
        ({"steps": [STEP], "priority": "H" * 100}, "spec.priority"),
    ],
)
def test_oversized_workflows_are_refused_by_the_api_server(
    control_plane: Cluster, namespace: str, spec: dict[str, Any], field: str
) -> None:
    code, err = create(control_plane, namespace, workflow("big", spec))
    assert code != 0
    assert field in err, err[:2000]
    assert len(err) < 20_000, "the API server's message should not echo the whole value"


def test_a_workflow_within_the_bounds_is_accepted(control_plane: Cluster, namespace: str) -> None:
    spec = {
        "steps": [{**STEP, "name": f"s{i}", "input": "state.input"} for i in range(limits.MAX_STEPS)],
        "edges": [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(limits.MAX_STEPS - 1)],
    }
    code, err = create(control_plane, namespace, workflow("largest", spec))
    assert code == 0, err


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"podLabels": {f"k{i}": "v" for i in range(limits.MAX_MAP_KEYS + 1)}}, "spec.podLabels"),
        ({"podLabels": {"k" * (limits.MAX_KEY_LENGTH + 1): "v"}}, "spec.podLabels"),
        ({"env": [{"name": f"E{i}", "value": "v"} for i in range(limits.MAX_LIST_ITEMS + 1)]}, "spec.env"),
        ({"image": "i" * (limits.MAX_IMAGE_LENGTH + 1)}, "spec.image"),
        ({"handler": {"kind": "echo", "settings": {f"k{i}": 1 for i in range(65)}}}, "spec.handler.settings"),
    ],
)
def test_oversized_agentpools_are_refused_by_the_api_server(
    control_plane: Cluster, namespace: str, spec: dict[str, Any], field: str
) -> None:
    code, err = create(
        control_plane, namespace, pool("big", {"role": "r", "handler": {"kind": "echo"}, **spec})
    )
    assert code != 0
    assert field in err, err[:2000]
