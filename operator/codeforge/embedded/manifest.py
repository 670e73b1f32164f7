"""Read a `codeforge run` manifest: one Workflow and the AgentPools its steps use (others default to echo).

AgentPools are parsed minimally (name, `spec.handler` kind and settings, `spec.concurrency`): embedded mode
needs no more, and the full AgentPool model belongs to the operator.

The file is hostile input as much as a Workflow sent to the API server: it is read only up to
`MAX_MANIFEST_BYTES`, parsed by `BoundedLoader` (nesting, alias expansion and duplicate keys bounded, so no
RecursionError or billion-laughs blow-up), and every message repeats at most a prefix of a bad value.
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

from codeforge.api.agentpool import API_VERSION, HandlerSpec
from codeforge.api.agentpool import KIND as AGENTPOOL_KIND
from codeforge.api.limits import (
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_YAML_DEPTH,
    clip,
    clip_text,
    too_deep,
)
from codeforge.api.task import POOL_NAME_RE
from codeforge.api.usage import RateLimitSpec
from codeforge.api.workflow import KIND as WORKFLOW_KIND
from codeforge.api.workflow import (
    WorkflowManifest,
    WorkflowSpecError,
    format_validation_error,
    key_in_path,
    unknown_field_hint,
)

#: Pools a workflow names but the file does not declare run this handler.
DEFAULT_HANDLER = "echo"
#: Documents in one file, and YAML nodes once aliases are expanded (a billion-laughs file stops here).
MAX_DOCUMENTS = 64
MAX_YAML_NODES = 200_000
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


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
    rate_limit: RateLimitSpec | None = None  # spec.rateLimit: shared by the pools naming its key

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
        if self.rate_limit is not None:
            env.update(self.rate_limit.to_env())
        for key, value in self.settings.items():
            name = "CODEFORGE_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
            env[name] = value if isinstance(value, str) else json.dumps(value)
        return env


@dataclass(frozen=True)
class Manifest:
    workflow: WorkflowManifest
    pools: dict[str, PoolSpec]
    directory: Path  # python handlers may import modules that sit beside the manifest
    source: str = ""  # "FILE (document N, Workflow)": where the Workflow's errors point


_CONSTRUCTOR_FAILURES = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


def _unreadable(node: yaml.Node, exc: Exception) -> yaml.constructor.ConstructorError:
    value = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__[:-4].lower()
    return yaml.constructor.ConstructorError(
        None,
        None,
        f"cannot read {clip(value)} as {node.tag.rsplit(':', 1)[-1]} ({_reason(exc)})",
        node.start_mark,
    )


def _reason(exc: Exception) -> str:
    return clip_text(str(exc).split("\n", 1)[0].split(";", 1)[0], 120) or type(exc).__name__


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds: nesting (its composer recurses once per level, so a deep file
    raised RecursionError), nodes after alias expansion, and no duplicate keys (as kubectl refuses them)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_document(self) -> yaml.Node | None:
        self._sizes = {}
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        nested = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        if nested:
            self._depth += 1
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels: flatten the document", mark
                )
        try:
            node: yaml.Node | None = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
        if node is not None and id(node) not in self._sizes:
            self._sizes[id(node)] = size = 1 + sum(self._sizes.get(id(c), 1) for c in _children(node))
            if size > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_YAML_NODES} values once aliases are expanded",
                    node.start_mark,
                )
        return node

    # PyYAML's constructors raise plain exceptions for values they cannot build (`!!bool abc`, the date
    # 2001-13-45, an integer of 5,000 digits): a YAML error with its line, like any other. Mappings and sets
    # are filled after the document's other values, so both steps are covered.
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _CONSTRUCTOR_FAILURES as exc:
            raise _unreadable(node, exc) from None

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return super().construct_document(node)
        except _CONSTRUCTOR_FAILURES as exc:  # filling a set or map: which one is not known here
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot fill a collection ({_reason(exc)}): check its !!set, !!map or !!omap tags",
                node.start_mark,
            ) from None

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float | int:
        """A whole number written as a float (`3.0`, `1.0e+3`) is an int, as the API server stores it (Go's
        JSON writes float64 3 as `3`, and from 1e21 on in exponent form, read back as a float): so
        `maxTasksInFlight: 3.0` is 3 here as in a cluster, and `3.5` is refused by an integer field in
        both (checked on the local control plane)."""
        value: float = super().construct_yaml_float(node)
        return int(value) if value.is_integer() and abs(value) < 1e21 else value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {clip(key_node.value)}: keep one", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream, through `BoundedLoader`."""
    loader = BoundedLoader(text)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            document = loader.get_data()
            if document is not None:
                documents.append(document)
            if len(documents) > MAX_DOCUMENTS:
                raise ManifestError(f"more than {MAX_DOCUMENTS} documents: split the file")
        return documents
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"unacceptable character #x{exc.character:04x} (line {line}, column {column}): remove it"
    if isinstance(exc, yaml.MarkedYAMLError):
        where = exc.problem_mark or exc.context_mark
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        context = f"{exc.context}: " if exc.context else ""
        return clip_text(f"{context}{exc.problem}{at}", 300)
    return clip_text(str(exc).split("\n", 1)[0], 300)


def _read(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; a manifest is far smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_manifest(path: Path) -> Manifest:
    text = _read(path)
    try:
        documents = load_yaml(text)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {_yaml_error(exc, text)}") from None
    for i, doc in enumerate(documents):
        _check_document(doc, f"{path} (document {i + 1}")
    workflows = [(i, d) for i, d in enumerate(documents) if d.get("kind") == WORKFLOW_KIND]
    if len(workflows) != 1:
        raise ManifestError(
            f"{path}: expected exactly one document with `kind: Workflow`, found {len(workflows)}"
        )
    index, document = workflows[0]
    try:
        workflow = WorkflowManifest.parse(document)
    except ValidationError as exc:
        detail = format_validation_error(exc, prefix="")
        raise ManifestError(f"{path} (document {index + 1}, Workflow):\n{_indent(detail)}") from None
    except WorkflowSpecError as exc:
        raise ManifestError(f"{path} (document {index + 1}, Workflow):\n{_indent(str(exc))}") from None
    pools: dict[str, PoolSpec] = {}
    for i, doc in enumerate(documents):
        if doc.get("kind") == AGENTPOOL_KIND:
            pool = _pool(doc, f"{path} (document {i + 1}, AgentPool)")
            if pool.name in pools:
                raise ManifestError(
                    f"{path} (document {i + 1}, AgentPool): a second pool named {pool.name!r}"
                )
            pools[pool.name] = pool
    for name in workflow.spec.task_pools:
        pools.setdefault(name, PoolSpec(name, declared=False))
    return Manifest(workflow, pools, path.resolve().parent, f"{path} (document {index + 1}, Workflow)")


def _indent(text: str) -> str:
    return "\n".join("  " + line.lstrip(".") for line in text.splitlines())


def _check_document(doc: Any, opening: str) -> None:
    """Every document is a Workflow or an AgentPool of our API version, with only the top-level keys of a
    Kubernetes object (a typo such as `sepc:` would otherwise be ignored)."""
    where = f"{opening})"
    if not isinstance(doc, dict):
        raise ManifestError(
            f"{where}: kind: missing, the document is a {type(doc).__name__}: "
            "write a mapping with apiVersion, kind, metadata and spec"
        )
    kind = doc.get("kind")
    if kind is None:
        raise ManifestError(f"{where}: kind: missing: add kind: Workflow or kind: AgentPool")
    if kind not in (WORKFLOW_KIND, AGENTPOOL_KIND):
        raise ManifestError(f"{where}: kind: {clip(kind)} is not supported here: use Workflow or AgentPool")
    where = f"{opening}, {kind})"
    if doc.get("apiVersion", API_VERSION) != API_VERSION:  # absent: this file's default version
        raise ManifestError(
            f"{where}: apiVersion: {clip(doc.get('apiVersion'))} is not served: use {API_VERSION}"
        )
    unknown = sorted(str(key) for key in doc if key not in _TOP_LEVEL)
    if unknown:
        raise ManifestError(
            f"{where}: {key_in_path(unknown[0]).lstrip('.')}: unknown field{unknown_field_hint(unknown[0])} "
            "(a document has apiVersion, kind, metadata and spec)"
        )


def _pool(doc: dict[str, Any], where: str) -> PoolSpec:
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: metadata.name is missing")
    if len(name) > 55 or "/" in name or not POOL_NAME_RE.match(name):
        raise ManifestError(
            f"{where}: metadata.name {clip(name)} is invalid: use up to 55 lowercase letters, digits and '-'"
        )
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: spec must be a mapping")
    handler = spec.get("handler") or {}
    if isinstance(handler, str):
        handler = {"kind": handler}
    if not isinstance(handler, dict):
        raise ManifestError(f"{where}: spec.handler must be {{kind: python, settings: {{...}}}}")
    try:
        parsed = HandlerSpec.model_validate(
            {"kind": DEFAULT_HANDLER, **handler}, by_alias=True, by_name=False
        )
    except ValidationError as exc:
        detail = format_validation_error(exc, prefix="spec.handler").splitlines()[0]
        if "settings" in detail and "dictionary" in detail:
            detail = "spec.handler.settings must be a mapping, e.g. {pythonFunction: mod:fn}"
        raise ManifestError(f"{where}: {detail}") from None
    if too_deep(parsed.settings, MAX_JSON_DEPTH) is not None:
        raise ManifestError(f"{where}: spec.handler.settings nests more than {MAX_JSON_DEPTH} levels deep")
    concurrency = spec.get("concurrency", 4)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 256:
        raise ManifestError(
            f"{where}: spec.concurrency must be a whole number >= 1 (at most 256), got {clip(concurrency)}"
        )
    queue = spec.get("queue") or {}
    lease = queue.get("leaseSeconds") if isinstance(queue, dict) else None
    if lease is not None and (
        isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease <= 86400
    ):
        raise ManifestError(
            f"{where}: spec.queue.leaseSeconds must be seconds, > 0 and <= 86400, got {clip(lease)}"
        )
    rate_limit = None
    if spec.get("rateLimit") is not None:
        try:
            rate_limit = RateLimitSpec.model_validate(spec["rateLimit"], by_alias=True, by_name=False)
            rate_limit.require_numbers("an embedded run has no platform declaring fleet-wide keys")
        except ValidationError as exc:
            detail = format_validation_error(exc, prefix="spec.rateLimit").splitlines()[0]
            raise ManifestError(f"{where}: {detail}") from None
        except ValueError as exc:
            raise ManifestError(f"{where}: spec.{exc}") from None
    return PoolSpec(
        name, parsed.kind, parsed.settings, concurrency, lease_seconds=lease, rate_limit=rate_limit
    )
