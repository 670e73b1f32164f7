"""Workflow spec: camelCase fields, defaults, and validation errors that name the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from codeforge.api.task import Priority
from codeforge.api.workflow import (
    JoinPolicy,
    WorkflowManifest,
    WorkflowSpecError,
    parse_workflow_spec,
)


def spec(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(WorkflowSpecError) as info:
        parse_workflow_spec(data)
    return str(info.value)


def test_camel_case_fields_and_defaults() -> None:
    parsed = parse_workflow_spec(
        spec("""
        input: {task: add a feature}
        priority: high
        timeoutSeconds: 600
        maxTasksInFlight: 5
        steps:
          - {name: research, pool: research, timeoutSeconds: 30, retries: {max: 2, backoffSeconds: 0.5}}
          - {name: debate, pool: debate, parallel: 3, join: majority, voteField: decision}
          - {name: each, pool: impl, forEach: state.input.files, join: firstSuccess}
        edges:
          - {from: research, to: debate, when: 'result.type == "debate"'}
          - {from: research, to: each}
          - {from: debate, to: END}
        """)
    )
    assert parsed.priority is Priority.HIGH
    assert parsed.timeout_seconds == 600
    assert parsed.entry_step == "research"
    research, debate, each = parsed.steps
    assert research.retries.max == 2
    assert research.retries.delay(1) == 0.5
    assert research.retries.delay(2) == 1.0
    assert debate.parallel == 3
    assert debate.join is JoinPolicy.MAJORITY
    assert debate.vote_field == "decision"
    assert each.for_each == "state.input.files"
    assert each.join is JoinPolicy.FIRST_SUCCESS
    assert parsed.edges[0].from_ == "research"
    dumped = parsed.model_dump(by_alias=True, exclude_none=True)
    assert dumped["timeoutSeconds"] == 600
    assert dumped["edges"][0]["from"] == "research"
    assert "forEach" in dumped["steps"][2]


def test_manifest_with_metadata() -> None:
    manifest = WorkflowManifest.model_validate(
        spec("""
        apiVersion: codeforge.ai/v1alpha1
        kind: Workflow
        metadata: {name: hello}
        spec:
          steps: [{name: hello, pool: echo}]
        """)
    )
    assert manifest.metadata.name == "hello"
    assert manifest.metadata.namespace == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps: [{name: a, pool: p}, {name: a, pool: p}]", "spec.steps[1].name: duplicate step name 'a'"),
        (
            "steps: [{name: a, pool: p}]\nedges: [{from: a, to: b}]",
            "spec.edges[0].to: unknown step 'b': use one of a or 'END'",
        ),
        ("steps: [{name: a, pool: p}]\nedges: [{from: x, to: a}]", "spec.edges[0].from: unknown step 'x'"),
        ("steps: [{name: a, pool: p}]\nentry: b", "spec.entry: unknown step 'b'"),
        (
            "steps: [{name: a, pool: p}, {name: b, pool: p}]",
            "spec.steps[1]: step 'b' is unreachable from the entry step 'a'",
        ),
        (
            "steps: [{name: a, pool: p}, {name: b, pool: p}]\nedges: [{from: a, to: b}, {from: b, to: a}]",
            "spec.edges: the workflow can never finish from steps a, b",
        ),
        (
            "steps: [{name: a, pool: p}]\nedges: [{from: a, to: END, when: 'result.x =='}]",
            "spec.edges[0].when: CEL expression does not compile",
        ),
        (
            "steps: [{name: a, pool: p, forEach: 'state.'}]",
            "spec.steps[0].forEach: CEL expression does not compile",
        ),
        ("steps: [{name: a, pool: p, input: '('}]", "spec.steps[0].input: CEL expression does not compile"),
        ("steps: [{name: a, pool: Bad_Pool}]", "spec.steps[0].pool: invalid pool name 'Bad_Pool'"),
        ("steps: [{name: A b, pool: p}]", "spec.steps[0].name: step name 'A b' is invalid"),
        ("steps: [{name: end, pool: p}]", "spec.steps[0].name: step name 'end' is reserved"),
        (
            "steps: [{name: a, pool: p, timeoutSeconds: 0}]",
            "spec.steps[0].timeoutSeconds: Input should be greater",
        ),
        (
            "steps: [{name: a, pool: p, parallel: 2, forEach: input.x}]",
            "spec.steps[0]: set either `parallel`",
        ),
        ("steps: [{name: a, pool: p, join: majority}]", "spec.steps[0]: join: majority needs a fan-out"),
        (
            "steps: [{name: a, pool: p, join: most}]",
            "spec.steps[0].join: Input should be 'all', 'firstSuccess'",
        ),
        ("steps: [{name: a, pool: p, pool2: q}]", "spec.steps[0].pool2: Extra inputs are not permitted"),
        ("steps: []", "spec.steps: List should have at least 1 item"),
        ("priority: urgent\nsteps: [{name: a, pool: p}]", "spec.priority: unknown priority 'urgent'"),
        (
            "steps: [{name: a, pool: p}, {name: b, pool: p}]\nedges: [{from: a, to: b}, {from: a, to: END}]",
            "spec.edges[1]: step 'a' already has a default edge (spec.edges[0])",
        ),
    ],
)
def test_invalid_specs_name_the_field(text: str, expected: str) -> None:
    assert expected in problems(spec(text))


def test_a_loop_with_a_conditional_exit_is_valid() -> None:
    parsed = parse_workflow_spec(
        spec("""
        steps: [{name: implement, pool: p}, {name: review, pool: p}]
        edges:
          - {from: implement, to: review}
          - {from: review, to: implement, when: 'result.verdict == "changes"'}
        """)
    )
    assert [e.to for e in parsed.edges_from("review")] == ["implement"]


def test_a_step_whose_only_exit_is_conditional_can_finish() -> None:
    # review has only a conditional edge: when it does not match, the workflow ends there
    parse_workflow_spec(
        spec("""
        steps: [{name: a, pool: p}, {name: b, pool: p}]
        edges: [{from: a, to: b}, {from: b, to: a, when: 'result.again'}]
        """)
    )


def test_all_problems_are_reported_at_once() -> None:
    text = problems(spec("steps: [{name: a, pool: p}]\nedges: [{from: a, to: x}, {from: y, to: a}]"))
    assert "spec.edges[0].to" in text
    assert "spec.edges[1].from" in text
