"""The API server itself refuses a change to a running Workflow's spec (a CEL transition rule at the CRD's
root, which sees both the spec and the status), except spec.suspend and the TTL fields; a Workflow that is
not running (Pending, or Failed with an invalid spec) stays editable. A change of an editable field must come
alone: one apply changing `suspend` and `input` together is refused as well. `spec.shutdown` (codeforge stop)
is one way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import Cluster
from cluster.resources import install_crds, temporary_namespace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def namespace(control_plane: Cluster) -> Iterator[str]:
    install_crds(control_plane)  # fails when the CRD's CEL rules exceed the cost budget
    with temporary_namespace(control_plane, "e2e-immutable") as name:
        yield name


def _apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> tuple[int, str]:
    out = cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=json.dumps(obj), check=False)
    return out.returncode, out.stderr


def _set_phase(cluster: Cluster, namespace: str, name: str, phase: str) -> None:
    cluster.kubectl(
        "patch",
        "workflow",
        name,
        "--namespace",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": phase}}),
    )


def _workflow(name: str, **spec: Any) -> dict[str, Any]:
    steps = [{"name": "build", "pool": "impl"}, {"name": "ok", "kind": "approval", "message": "ship?"}]
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"steps": steps, "edges": [{"from": "build", "to": "ok"}], "input": {"n": 1}, **spec},
    }


@pytest.mark.parametrize("phase", ["Running", "Suspended"])
def test_the_spec_of_a_running_workflow_is_refused_but_suspend_passes(
    control_plane: Cluster, namespace: str, phase: str
) -> None:
    name = f"imm-{phase.lower()}"
    assert _apply(control_plane, namespace, _workflow(name))[0] == 0
    _set_phase(control_plane, namespace, name, phase)
    for change in ({"input": {"n": 2}}, {"priority": "HIGH"}, {"timeoutSeconds": 60}):
        code, err = _apply(control_plane, namespace, _workflow(name, **change))
        assert code != 0, change
        assert "the spec of a running Workflow is immutable except spec.suspend" in err, err
    # An editable field changed in the same apply as another one: refused too (the free-JSON `input` used to
    # slip through beside `suspend`, since CEL cannot name an untyped field directly).
    together: list[dict[str, Any]] = [
        {"suspend": True, "input": {"n": 2}},
        {"shutdown": "Stop", "input": {"n": 9}},
        {"ttlSecondsAfterFinished": 5, "input": None},
        {"suspend": True, "priority": "LOW"},
    ]
    for mixed in together:
        code, err = _apply(control_plane, namespace, _workflow(name, **mixed))
        assert code != 0, mixed
        assert "the spec of a running Workflow is immutable except spec.suspend" in err, err
        assert "in an apply of their own" in err, err
    budget = {"maxTokens": 1000}  # raising a budget lets a run it suspended go on: allowed while running
    code, err = _apply(
        control_plane, namespace, _workflow(name, suspend=True, ttlSecondsAfterFinished=60, budget=budget)
    )
    assert code == 0, err
    got = control_plane.kubectl("get", "workflow", name, "-n", namespace, "-o", "json").stdout
    spec = json.loads(got)["spec"]
    assert spec["suspend"] is True
    assert spec["ttlSecondsAfterFinished"] == 60
    assert spec["budget"]["maxTokens"] == 1000
    assert spec["input"] == {"n": 1}


def test_shutdown_passes_while_running_and_cannot_be_withdrawn(
    control_plane: Cluster, namespace: str
) -> None:
    name = "imm-shutdown"
    assert _apply(control_plane, namespace, _workflow(name))[0] == 0
    _set_phase(control_plane, namespace, name, "Running")
    code, err = _apply(control_plane, namespace, _workflow(name, shutdown="Stop"))
    assert code == 0, err
    code, err = _apply(control_plane, namespace, _workflow(name, shutdown="Later"))
    assert code != 0
    assert 'Unsupported value: "Later"' in err, err
    withdrawn = control_plane.kubectl(
        "patch", "workflow", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"shutdown":null}}',
        check=False,
    )  # fmt: skip
    assert withdrawn.returncode != 0
    assert "spec.shutdown cannot be removed or changed from Terminate to Stop" in withdrawn.stderr
    code, err = _apply(control_plane, namespace, _workflow(name, shutdown="Terminate"))
    assert code == 0, err
    code, err = _apply(control_plane, namespace, _workflow(name, shutdown="Stop"))
    assert code != 0
    assert "spec.shutdown cannot be removed or changed from Terminate to Stop" in err, err


@pytest.mark.parametrize("phase", [None, "Pending", "Failed", "Succeeded"])
def test_a_workflow_that_is_not_running_stays_editable(
    control_plane: Cluster, namespace: str, phase: str | None
) -> None:
    name = f"edit-{(phase or 'new').lower()}"
    assert _apply(control_plane, namespace, _workflow(name))[0] == 0
    if phase:
        _set_phase(control_plane, namespace, name, phase)
    code, err = _apply(control_plane, namespace, _workflow(name, input={"n": 3}))
    assert code == 0, err
