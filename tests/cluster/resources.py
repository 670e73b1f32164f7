"""kubectl-level helpers of the e2e suite: CRDs, namespaces, YAML documents and `kubectl get` tables."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cluster.control_plane import REPO_ROOT, Cluster

CHART_DIR = REPO_ROOT / "helm" / "codeforge"
CHART_CRDS_DIR = CHART_DIR / "crds"
EXAMPLES_DIR = REPO_ROOT / "examples"
#: The label the example research pool's nodeSelector asks for (examples/agentpools/research.yaml).
AGENT_NODE_LABEL = "codeforge.ai/agents"


def install_crds(cluster: Cluster) -> None:
    """The chart's CRDs, applied server-side so a `helm install` that created them first is no conflict;
    waits until the API server serves them."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART_CRDS_DIR))
    names = [
        doc["metadata"]["name"] for path in sorted(CHART_CRDS_DIR.glob("*.yaml")) for doc in documents(path)
    ]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])


def label_agent_nodes(cluster: Cluster) -> None:
    """Give the local control plane's kwok nodes the label the example pools select (as a cluster admin
    would label a node pool for agents). An existing cluster is left alone."""
    if cluster.is_local:
        cluster.kubectl("label", "nodes", "-l", "type=kwok", f"{AGENT_NODE_LABEL}=true", "--overwrite")


@contextlib.contextmanager
def temporary_namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A fresh namespace; deleted afterwards without waiting (its objects go with it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, without empty ones."""
    return parse_documents(path.read_text())


def parse_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def table(cluster: Cluster, *args: str) -> list[dict[str, str]]:
    """`kubectl get ...` as the user sees it: one dict per row, keyed by the column headers.

    Columns are split at the header's column starts (kubectl pads every column to its widest cell), so an
    empty cell (a MESSAGE not set yet) reads as "" instead of shifting the next ones."""
    lines = [line for line in cluster.kubectl("get", *args).stdout.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts: list[int] = []
    for i, char in enumerate(header):
        if char != " " and (i == 0 or header[i - 1] == " "):
            starts.append(i)
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def event_reasons(cluster: Cluster, namespace: str, kind: str, name: str) -> list[str]:
    """The reasons of the Events about one object, as `kubectl get events` lists them."""
    return cluster.kubectl(
        "get", "events", "--namespace", namespace,
        f"--field-selector=involvedObject.kind={kind},involvedObject.name={name}",
        "-o", "jsonpath={.items[*].reason}",
    ).stdout.split()  # fmt: skip


def sleep_workflow(name: str, pool: str, steps: list[str], seconds: float) -> dict[str, Any]:
    """A chain of steps on `pool`, each sleeping `seconds` (the built-in `sleep` handler)."""
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "input": {"n": 1},
            "steps": [{"name": s, "pool": pool, "params": {"seconds": seconds}} for s in steps],
            "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(steps)],
        },
    }
