"""The CRDs in crds/ are exactly what the models render, and the rendered schemas behave like the API server.

`admit` below mimics what the API server does with a manifest: apply the schema's defaults, check types,
bounds and unknown fields (strict field validation), then run the CEL rules (with the `cel` package, the same
expression language the API server evaluates).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cel
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from codeforge.api import crd, limits
from codeforge.api.agentpool import AgentPoolSpec
from codeforge.api.workflow import WorkflowSpecError, parse_workflow_spec
from codeforge.cli import _register, app

REPO = Path(__file__).resolve().parents[2]

JSON = dict[str, Any]
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def admit(schema: JSON, value: Any, path: str = "") -> list[str]:
    """Errors the API server would report for `value` (already defaulted) against a structural schema."""
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            return [f"{path}: int or string"]
        too_long = isinstance(value, str) and len(value) > schema.get("maxLength", len(value))
        return [f"{path}: too long"] if too_long else []
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and (
        value <= schema["minimum"] if schema.get("exclusiveMinimum") else value < schema["minimum"]
    ):
        errors.append(f"{path}: below minimum")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above maximum")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{path}: too short")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: too long")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: does not match {schema['pattern']}")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: too many items")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{path}: too many properties")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        properties = schema.get("properties")
        for key, sub in value.items():
            if properties is not None and key in properties:
                errors += admit(properties[key], sub, f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += admit(schema["additionalProperties"], sub, f"{path}.{key}")
            elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += admit(schema["items"], item, f"{path}[{index}]")
    if not errors:
        for rule in schema.get("x-kubernetes-validations", []):
            if not cel.evaluate(rule["rule"], {"self": value}):
                errors.append(f"{path}: {rule['message']}")
    return errors


def defaulted(schema: JSON, manifest: JSON) -> JSON:
    result: JSON = crd.apply_defaults(schema, manifest)
    return result


def agentpool_schema() -> JSON:
    manifest = yaml.safe_load((REPO / "crds" / crd.file_name(crd.AGENTPOOL)).read_text())
    schema: JSON = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def pool(spec: JSON, name: str = "research") -> JSON:
    return {
        "apiVersion": "codeforge.ai/v1alpha1",
        "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": spec,
    }


MINIMAL: JSON = {"role": "research", "image": "agent:1", "handler": {"kind": "echo"}}
FULL: JSON = {
    **MINIMAL,
    "concurrency": 4,
    "autoscaling": {
        "mode": "queue",
        "minReplicas": 3,
        "maxReplicas": 500,
        "targetTasksPerAgent": 2,
        "scaleUp": {"maxStepPercent": 100, "periodSeconds": 15},
        "scaleDown": {"stabilizationWindowSeconds": 300, "maxStep": 10},
    },
    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}},
    "env": [
        {"name": "A", "value": "1"},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ],
    "envFrom": [{"secretRef": {"name": "llm-keys"}}],
    "tolerations": [{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    },
    "podDisruptionBudget": {"maxUnavailable": 2},
}


def test_crds_directory_matches_the_models() -> None:
    drift = crd.check(REPO / "crds")
    assert not drift, "crds/ drifted from the models; run `codeforge crds`\n" + drift.report()


def test_the_charts_copy_matches_the_models_too() -> None:
    chart_crds = REPO / "helm" / "codeforge" / "crds"
    assert chart_crds.is_dir(), "helm/codeforge/crds is missing: run `make chart`"
    drift = crd.check(chart_crds)
    assert not drift, (
        "helm/codeforge/crds drifted; run `codeforge crds --out helm/codeforge/crds`\n" + drift.report()
    )


def test_crds_command_check_fails_with_a_diff_on_drift(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    assert runner.invoke(app, ["crds", "--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--out", str(tmp_path), "--check"]).exit_code == 0
    target = tmp_path / crd.file_name(crd.AGENTPOOL)
    target.write_text(target.read_text().replace("shortNames:\n    - ap", "shortNames:\n    - apx"))
    result = runner.invoke(app, ["crds", "--out", str(tmp_path), "--check"])
    assert result.exit_code == 1
    assert "-    - apx" in result.output
    assert "+    - ap" in result.output


def test_stale_generated_files_count_as_drift(tmp_path: Path) -> None:
    crd.write(tmp_path)
    (tmp_path / f"{crd.GROUP}_gone.yaml").write_text("kind: CustomResourceDefinition\n")
    assert set(crd.check(tmp_path).diffs) == {f"{crd.GROUP}_gone.yaml"}


def test_agentpool_crd_names_subresources_and_columns() -> None:
    manifest = crd.crd_manifest(crd.AGENTPOOL)
    names = manifest["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["ap"], ["codeforge"])
    version = manifest["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["ROLE", "MIN", "MAX", "DESIRED", "READY", "QUEUED", "IN-FLIGHT", "AGE"]


def _walk(schema: JSON, path: str = "") -> list[tuple[str, JSON]]:
    nodes = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += _walk(schema[key], f"{path}[]")
    return nodes


@pytest.mark.parametrize("resource", crd.custom_resources(), ids=lambda r: r.kind)
def test_schemas_are_structural(resource: crd.CustomResource) -> None:
    schema = crd.openapi_schema(resource)
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title"} & set(node), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert (
            node.get("type")
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path


def test_printer_columns_and_scale_paths_exist_in_the_schema() -> None:
    schema = crd.openapi_schema(crd.AGENTPOOL)
    paths = {path for path, _ in _walk(schema)}
    version = crd.crd_manifest(crd.AGENTPOOL)["spec"]["versions"][0]
    for column in version["additionalPrinterColumns"]:
        assert column["jsonPath"] in paths or column["jsonPath"] == ".metadata.creationTimestamp"
    for key in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath"):
        assert version["subresources"]["scale"][key] in paths


@pytest.mark.parametrize("spec", [MINIMAL, FULL], ids=["minimal", "full"])
def test_example_manifests_are_admitted(spec: JSON) -> None:
    schema = agentpool_schema()
    assert admit(schema, defaulted(schema, pool(spec))) == []


def example_pools() -> list[tuple[str, JSON]]:
    found = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "AgentPool":
                found.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}", doc))
    return found


@pytest.mark.parametrize(("where", "manifest"), example_pools(), ids=[w for w, _ in example_pools()])
def test_example_files_are_admitted_and_accepted_by_the_model(where: str, manifest: JSON) -> None:
    schema = agentpool_schema()
    assert admit(schema, defaulted(schema, manifest)) == [], where
    AgentPoolSpec.model_validate(manifest["spec"])


def test_crd_defaults_equal_the_model_defaults() -> None:
    schema = agentpool_schema()
    server_side = defaulted(schema, pool(MINIMAL))["spec"]
    assert (
        AgentPoolSpec.model_validate(server_side).to_k8s() == AgentPoolSpec.model_validate(MINIMAL).to_k8s()
    )
    assert server_side["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert server_side["autoscaling"]["minReplicas"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "minReplicas must not exceed maxReplicas"),
        ({"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]}, "exactly one"),
        ({"env": [{"name": "A", "value": "1", "valueFrom": {}}]}, "either value or valueFrom"),
        ({"concurrency": 0}, "below minimum"),
        ({"autoscaling": {"mode": "hpa"}}, "not in"),
        ({"handler": {"kind": "echo"}, "imag": "typo"}, "unknown field"),
        ({"handler": {}}, ".spec.handler.kind: required"),
        ({"podLabels": {f"k{i}": "v" for i in range(limits.MAX_MAP_KEYS + 1)}}, "too many properties"),
        ({"podLabels": {"k" * (limits.MAX_KEY_LENGTH + 1): "v"}}, "keys must be 1-317 characters"),
        ({"podLabels": {"k": "v" * 64}}, ".spec.podLabels.k: too long"),
        ({"env": [{"name": f"E{i}"} for i in range(limits.MAX_LIST_ITEMS + 1)]}, "too many items"),
        ({"env": [{"name": "E", "value": "v" * (limits.MAX_VALUE_LENGTH + 1)}]}, "too long"),
        ({"image": "i" * (limits.MAX_IMAGE_LENGTH + 1)}, ".spec.image: too long"),
        ({"handler": {"kind": "echo", "settings": {f"k{i}": 1 for i in range(65)}}}, "too many properties"),
        ({"resources": {"limits": {"memory": "1" * 63 + "Gi"}}}, "too long"),
        ({"tolerations": [{"key": "k"}] * 65}, "too many items"),
        ({"rateLimit": {"key": "openai/gpt-4.1", "requestsPerMinute": -1}}, "below minimum"),
        ({"rateLimit": {"key": "{slot}", "requestsPerMinute": 1}}, ".spec.rateLimit.key: does not match"),
    ],
)
def test_invalid_manifests_are_refused_by_schema_and_model_alike(change: JSON, message: str) -> None:
    schema = agentpool_schema()
    errors = admit(schema, defaulted(schema, pool({**MINIMAL, **change})))
    assert any(message in e for e in errors), errors
    with pytest.raises(ValidationError):
        AgentPoolSpec.model_validate({**MINIMAL, **change})


def workflow_schema() -> JSON:
    manifest = yaml.safe_load((REPO / "crds" / crd.file_name(crd.WORKFLOW)).read_text())
    schema: JSON = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timeoutSeconds": True}, "timeoutSeconds"),
        ({"timeoutSeconds": "30"}, "timeoutSeconds"),
        ({"suspend": "yes"}, "suspend"),
        ({"suspend": 1}, "suspend"),
        ({"maxStepRuns": "5"}, "maxStepRuns"),
        ({"maxTasksInFlight": 5.0}, "maxTasksInFlight"),
        ({"steps": [{"name": "a", "pool": "p", "parallel": "3"}]}, "steps[0].parallel"),
        ({"steps": [{"name": "a", "pool": "p", "retries": {"max": True}}]}, "steps[0].retries.max"),
        ({"fairShare": {"weight": True}}, "fairShare.weight"),
        ({"budget": {"maxCost": "1.5"}}, "budget.maxCost"),
    ],
)
def test_wrong_types_are_refused_by_the_workflow_schema_and_model_alike(change: JSON, field: str) -> None:
    """`codeforge run` (the model) refuses what `kubectl apply` (the schema) does: pydantic's lax mode took
    `true` as 1 and "3" as 3."""
    spec = {"steps": [{"name": "a", "pool": "p"}], **change}
    schema = workflow_schema()
    manifest = {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": "Workflow", "metadata": {"name": "w"}}
    errors = admit(schema, defaulted(schema, {**manifest, "spec": spec}))
    assert any(e.startswith(f".spec.{field}: expected") for e in errors), errors
    with pytest.raises(WorkflowSpecError, match=re.escape(f"spec.{field}: Input should be a valid")):
        parse_workflow_spec(spec)


#: Every integer, number and boolean of the AgentPool spec, as `_walk` names it
#: (`.tolerations[].tolerationSeconds`).
POOL_TYPED_FIELDS: list[tuple[str, str]] = [
    (path, node["type"])
    for path, node in _walk(agentpool_schema()["properties"]["spec"])
    if node.get("type") in ("integer", "number", "boolean")
]
#: Required siblings of an object on the way to a field (`[]`: the one item of a list).
POOL_REQUIRED: dict[str, JSON] = {
    ".imagePullSecrets[]": {"name": "pull"},
    ".envFrom[].secretRef": {"name": "keys"},
    ".envFrom[].configMapRef": {"name": "settings"},
    ".rateLimit": {"key": "openai/gpt-4.1"},
}
#: Values of another type: the CRD refuses each, and pydantic's lax mode took most (true as 1, "3" as 3).
WRONG_TYPED: dict[str, list[Any]] = {
    "integer": [True, "3", 1.5, 3.0],
    "number": [True, "1.5"],
    "boolean": ["true", "yes", 1],
}
RIGHT_TYPED: dict[str, list[Any]] = {"integer": [3], "number": [2, 2.5], "boolean": [True, False]}


def pool_with(path: str, value: Any) -> JSON:
    """MINIMAL with the field at `path` (as `_walk` names it) set to `value`."""
    spec: JSON = {**MINIMAL}
    node: Any = spec
    at = ""
    parts = re.findall(r"\.\w+|\[\]", path)
    for i, part in enumerate(parts):
        at += part
        last = i == len(parts) - 1
        child: Any = value if last else ([] if parts[i + 1] == "[]" else {**POOL_REQUIRED.get(at, {})})
        if part == "[]":
            node.append(child)
        else:
            node[part[1:]] = child
        node = child
    return spec


def test_the_typed_fields_of_the_agentpool_spec_are_found() -> None:
    assert len(POOL_TYPED_FIELDS) >= 19
    assert (".tolerations[].tolerationSeconds", "integer") in POOL_TYPED_FIELDS
    assert (".envFrom[].secretRef.optional", "boolean") in POOL_TYPED_FIELDS
    assert (".rateLimit.burstSeconds", "number") in POOL_TYPED_FIELDS


@pytest.mark.parametrize(("path", "kind"), POOL_TYPED_FIELDS, ids=[p for p, _ in POOL_TYPED_FIELDS])
def test_wrong_types_are_refused_by_the_agentpool_schema_and_model_alike(path: str, kind: str) -> None:
    """Every integer, number and boolean of the AgentPool spec is typed in the model as the CRD types it:
    the operator refuses (InvalidSpec, naming the field and the fix) what `kubectl apply` would."""
    from codeforge.controller.agentpool.reconcile import spec_error_message

    schema = agentpool_schema()
    field = path.lstrip(".").replace("[]", "[0]")
    for value in RIGHT_TYPED[kind]:
        spec = pool_with(path, value)
        assert admit(schema, defaulted(schema, pool(spec))) == [], (path, value)
        AgentPoolSpec.model_validate(spec)
    hint = {"integer": "write a whole number", "number": "write a number", "boolean": "write true or false"}
    for value in WRONG_TYPED[kind]:
        spec = pool_with(path, value)
        errors = admit(schema, defaulted(schema, pool(spec)))
        assert any(e.startswith(f".spec.{field}: expected {kind}") for e in errors), (value, errors)
        with pytest.raises(ValidationError) as caught:
            AgentPoolSpec.model_validate(spec)
        message = spec_error_message(caught.value)
        assert message.startswith(f"spec.{field}: Input should be a valid"), (value, message)
        assert f": {hint[kind]} without quotes" in message, message
        assert "\n" not in message


@pytest.mark.parametrize("path", [".resources.requests.cpu", ".podDisruptionBudget.maxUnavailable"])
def test_an_int_or_string_field_takes_an_integer_or_a_string_only(path: str) -> None:
    schema = agentpool_schema()
    right: list[Any] = [2, "500m"]
    wrong: list[Any] = [True, 1.5]
    for value in right:
        spec = pool_with(path, value)
        assert admit(schema, defaulted(schema, pool(spec))) == [], (path, value)
        AgentPoolSpec.model_validate(spec)
    for value in wrong:
        with pytest.raises(ValidationError):
            AgentPoolSpec.model_validate(pool_with(path, value))


def test_long_names_are_refused() -> None:
    schema = agentpool_schema()
    errors = admit(schema, defaulted(schema, pool(MINIMAL, name="a" * 56)))
    assert errors == [": AgentPool names are limited to 55 characters"]


def test_the_workflow_spec_already_renders_to_a_structural_schema() -> None:
    # The Workflow CRD joins `custom_resources()` once api/workflow.py defines WorkflowStatus too.
    from codeforge.api.workflow import WorkflowSpec

    for path, node in _walk(crd.structural_schema(WorkflowSpec)):
        assert not {"$ref", "anyOf", "title"} & set(node), path
        assert (
            node.get("type")
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), path


#: Free JSON whose inside no structural schema can bound: the model bounds its encoded size and depth.
UNBOUNDED_BY_DESIGN = {"Workflow.spec.input"}


def _unbounded(node: JSON) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return "maxLength" not in node
    kind = node.get("type")
    if kind == "string":
        return "maxLength" not in node and "enum" not in node
    if kind == "array":
        return "maxItems" not in node
    if kind == "object":
        return "properties" not in node and "maxProperties" not in node
    return kind is None and bool(node.get("x-kubernetes-preserve-unknown-fields"))


@pytest.mark.parametrize("resource", crd.custom_resources(), ids=lambda r: r.kind)
def test_every_user_string_list_and_map_in_a_spec_is_bounded(resource: crd.CustomResource) -> None:
    """The API server refuses an oversized object before the operator sees it (issue: a 100 KB `when`
    crashed the operator); each bound is the model's own, so the embedded path refuses the same."""
    spec = crd.openapi_schema(resource)["properties"]["spec"]
    unbounded = [f"{resource.kind}.spec{path}" for path, node in _walk(spec) if path and _unbounded(node)]
    assert sorted(set(unbounded) - UNBOUNDED_BY_DESIGN) == []


def test_the_immutability_rule_compares_untyped_fields_when_an_editable_one_changed() -> None:
    from codeforge.api.crd import WORKFLOW_MUTABLE_WHILE_RUNNING, immutable_while_running
    from codeforge.api.workflow import WorkflowSpec

    rule = immutable_while_running(WorkflowSpec, WORKFLOW_MUTABLE_WHILE_RUNNING, ("Running",))
    then = rule.split(" : ", 1)[1]  # the branch taken when an editable field changed
    assert "dyn(self.spec).input == dyn(oldSelf.spec).input" in then
    assert "self.spec.priority == oldSelf.spec.priority" in then
    assert "self.spec.suspend" not in then
    assert "shutdown" in WORKFLOW_MUTABLE_WHILE_RUNNING
