"""Read a `codeforge run` manifest: one Workflow and the AgentPools its steps use (others default to echo).

AgentPools are parsed minimally (name, `spec.handler` kind and settings, `spec.concurrency`): embedded mode
needs no more, and the full AgentPool model belongs to the operator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from codeforge.api.workflow import WorkflowManifest, WorkflowSpecError, format_validation_error

#: Pools a workflow names but the file does not declare run this handler.
DEFAULT_HANDLER = "echo"


class ManifestError(ValueError):
    """The manifest file is unreadable or invalid; the message names the document and field."""


@dataclass(frozen=True)
class PoolSpec:
    """The part of an AgentPool that embedded mode needs: its name and its agents' handler."""

    name: str
    handler: str = DEFAULT_HANDLER
    settings: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = 4
    declared: bool = True
    lease_seconds: float | None = None  # spec.queue.leaseSeconds: how soon a dead agent's task is redelivered

    def agent_env(self, queue_url: str) -> dict[str, str]:
        """`CODEFORGE_*` variables for one agent of this pool (the same the operator sets on pods)."""
        env = {
            "CODEFORGE_POOL": self.name,
            "CODEFORGE_QUEUE_URL": queue_url,
            "CODEFORGE_HANDLER": self.handler,
            "CODEFORGE_CONCURRENCY": str(self.concurrency),
            "CODEFORGE_HEALTH_PORT": "off",
            "CODEFORGE_LOG_LEVEL": "warning",
        }
        if self.lease_seconds is not None:
            env["CODEFORGE_LEASE_SECONDS"] = f"{self.lease_seconds:g}"
        for key, value in self.settings.items():
            name = "CODEFORGE_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
            env[name] = value if isinstance(value, str) else json.dumps(value)
        return env


@dataclass(frozen=True)
class Manifest:
    workflow: WorkflowManifest
    pools: dict[str, PoolSpec]
    directory: Path  # python handlers may import modules that sit beside the manifest


def load_manifest(path: Path) -> Manifest:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    workflows = [
        (i, d) for i, d in enumerate(documents) if isinstance(d, dict) and d.get("kind") == "Workflow"
    ]
    if len(workflows) != 1:
        raise ManifestError(
            f"{path}: expected exactly one document with `kind: Workflow`, found {len(workflows)}"
        )
    index, document = workflows[0]
    try:
        workflow = WorkflowManifest.model_validate(document)
    except ValidationError as exc:
        detail = format_validation_error(exc, prefix="")
        raise ManifestError(f"{path} (document {index + 1}, Workflow):\n{_indent(detail)}") from None
    except WorkflowSpecError as exc:
        raise ManifestError(f"{path} (document {index + 1}, Workflow):\n{_indent(str(exc))}") from None
    pools: dict[str, PoolSpec] = {}
    for i, doc in enumerate(documents):
        if isinstance(doc, dict) and doc.get("kind") == "AgentPool":
            pool = _pool(doc, f"{path} (document {i + 1}, AgentPool)")
            pools[pool.name] = pool
    for step in workflow.spec.steps:
        pools.setdefault(step.pool, PoolSpec(step.pool, declared=False))
    return Manifest(workflow, pools, path.resolve().parent)


def _indent(text: str) -> str:
    return "\n".join("  " + line.lstrip(".") for line in text.splitlines())


def _pool(doc: dict[str, Any], where: str) -> PoolSpec:
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name is missing")
    spec = doc.get("spec") or {}
    handler = spec.get("handler") or {}
    if isinstance(handler, str):
        handler = {"kind": handler}
    if not isinstance(handler, dict) or not isinstance(handler.get("kind", DEFAULT_HANDLER), str):
        raise ManifestError(f"{where}: spec.handler must be {{kind: python, settings: {{...}}}}")
    settings = handler.get("settings") or {}
    if not isinstance(settings, dict):
        raise ManifestError(
            f"{where}: spec.handler.settings must be a mapping, e.g. {{pythonFunction: mod:fn}}"
        )
    concurrency = spec.get("concurrency", 4)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ManifestError(f"{where}: spec.concurrency must be a whole number >= 1, got {concurrency!r}")
    queue = spec.get("queue") or {}
    lease = queue.get("leaseSeconds") if isinstance(queue, dict) else None
    if lease is not None and (
        isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease <= 86400
    ):
        raise ManifestError(
            f"{where}: spec.queue.leaseSeconds must be seconds, > 0 and <= 86400, got {lease!r}"
        )
    return PoolSpec(name, handler.get("kind", DEFAULT_HANDLER), settings, concurrency, lease_seconds=lease)
