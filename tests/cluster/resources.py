"""kubectl-level helpers of the e2e suite: CRDs, namespaces, YAML documents, `kubectl get` tables, and the
AgentPool / Workflow documents and waits the e2e modules share."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cluster.control_plane import REPO_ROOT, Cluster
from cluster.processes import wait_until

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


# --- AgentPool and Workflow documents, and waiting for a Workflow's status --------------------------------

API_VERSION = "codeforge.ai/v1alpha1"
#: Pools of the e2e suite run their agents as local processes: the image is never pulled.
E2E_AGENT_IMAGE = "registry.invalid/codeforge/agent:e2e"


def pool_doc(name: str, handler: str = "echo") -> dict[str, Any]:
    """An AgentPool of one agent (role = name) whose handler is `handler`, as the e2e modules declare them."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "role": name,
            "image": E2E_AGENT_IMAGE,
            "handler": {"kind": handler},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        },
    }


def workflow_doc(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Workflow", "metadata": {"name": name}, "spec": spec}


def apply_docs(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--namespace", namespace, "-f", "-", input=dump(list(docs)))


def get_workflow(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.kubectl_json("get", "workflow", name, "--namespace", namespace)
    return obj


def wait_workflow(
    cluster: Cluster,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    *,
    timeout: float = 60,
    tail: Callable[[], str] = lambda: "",
) -> dict[str, Any]:
    """The Workflow object once `check` holds for it; on a timeout the failure shows its status and `tail`
    (the operator's log)."""

    def reached() -> dict[str, Any] | None:
        obj = get_workflow(cluster, namespace, name)
        return obj if check(obj) else None

    return wait_until(
        reached,
        timeout=timeout,
        interval=0.3,
        what=f"Workflow {name}{what}",
        detail=lambda: f"{get_workflow(cluster, namespace, name).get('status')}\n{tail()}",
    )
