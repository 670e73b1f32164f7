"""Workflow spec: camelCase fields, defaults, and validation errors that name the field and the fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import cel
import pytest
import yaml
from pydantic import ValidationError

from codeforge.api import cel_check
from codeforge.api.limits import clip
from codeforge.api.task import Priority
from codeforge.api.workflow import (
    JoinPolicy,
    Step,
    WorkflowManifest,
    WorkflowSpecError,
    format_validation_error,
    parse_workflow_spec,
)


def spec(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


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


# --- hostile input (issue #9): each of these was accepted, crashed or echoed the whole value before ------


def edge_when(expression: str) -> dict[str, Any]:
    return {"steps": [{"name": "a", "pool": "p"}], "edges": [{"from": "a", "to": "END", "when": expression}]}


def test_a_100_kb_when_is_refused_before_the_cel_compiler_crashes_the_process() -> None:
    # In a subprocess: the compiler's recursive parser overflowed the stack (SIGSEGV, exit -11).
    script = textwrap.dedent("""
        from codeforge.api.workflow import WorkflowSpecError, parse_workflow_spec
        spec = {"steps": [{"name": "a", "pool": "p"}],
                "edges": [{"from": "a", "to": "END", "when": "1" + " + 1" * 40_000}]}
        try:
            parse_workflow_spec(spec)
        except WorkflowSpecError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("spec.edges[0].when: String should have at most 4096 characters")
    assert len(done.stdout) < 200


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1" + "+1" * 1100, "2201 tokens, over the limit of 512"),  # within 4096 characters
        ("(" * 33 + "1" + ")" * 33, "nests brackets more than 32 deep"),
        ("[" * 40 + "]" * 40, "nests brackets more than 32 deep"),
        ("!" * 2000 + "true", "over the limit of 512"),
    ],
)
def test_cel_size_and_nesting_are_checked_before_compiling(expression: str, expected: str) -> None:
    assert expected in problems(edge_when(expression))


def _nested_exists(levels: int, items: int) -> str:
    literal = "[" + ",".join(["0"] * items) + "]"
    expression = "false"
    for i in range(levels):
        expression = f"{literal}.exists(v{i}, {expression})"
    return expression


def test_a_compile_error_shows_no_terminal_control_characters() -> None:
    text = problems(edge_when('"\\"\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED'))
    assert "does not compile" in text
    assert "\x1b" not in text, text
    assert "\x07" not in text, text
    assert "\\x1b" in text  # escaped, so the user still sees what was there


@pytest.mark.parametrize("name", ["W", "a_b", "../x", "w\x1b[31m", "-a", "a" * 254, "a..b"])
def test_a_workflow_name_must_be_a_kubernetes_name(name: str) -> None:
    document = {
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"steps": [{"name": "a", "pool": "p"}]},
    }
    with pytest.raises(ValidationError) as info:
        WorkflowManifest.parse(document)
    assert "metadata.name" in format_validation_error(info.value, prefix="")
    assert "\x1b" not in str(info.value).replace("\\x1b", "")


def test_a_dotted_workflow_name_and_a_namespace_are_accepted() -> None:
    document = {
        "kind": "Workflow",
        "metadata": {"name": "release-1.2", "namespace": "team-a"},
        "spec": {"steps": [{"name": "a", "pool": "p"}]},
    }
    assert WorkflowManifest.parse(document).metadata.name == "release-1.2"
    with pytest.raises(ValidationError, match="not a namespace name"):
        WorkflowManifest.parse(document | {"metadata": {"name": "w", "namespace": "Team.A"}})


def test_nested_comprehensions_are_refused_before_they_run() -> None:
    # six levels over 30 items: 7e8 iterations in the package's evaluator (minutes, holding the GIL), and
    # no variables, so validation evaluated it as a constant
    text = problems(edge_when(_nested_exists(6, 30)))
    assert "nests comprehensions (all, exists, exists_one, filter, map) more than 2 deep" in text
    assert "nests comprehensions" in problems(edge_when("[1].map(x, [1].filter(y, [1].all(z, true)))"))
    # two levels, and comprehensions side by side, are fine
    parse_workflow_spec(edge_when(_nested_exists(2, 30)))
    parse_workflow_spec(edge_when("result.xs.exists(x, x > 1) && result.xs.all(x, [1].exists(y, y == x))"))
    # a macro name as a field, not a call, is no comprehension
    parse_workflow_spec(edge_when("result.map.exists(x, x.filter == result.all.map)"))


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("null", "a condition must give true or false; this one always gives null"),
        ("1 + 1", "always gives 2"),
        ('1 + "a"', '1 + "a" is an error: No such overload'),
        ('result.score > 1 + "a"', '1 + "a" is an error'),
        ('"a" < 1', '"a" < 1 is an error'),
        ("1 / 0", "1 / 0 is an error: division by zero"),
        ("[1][5] == 1", "always fails"),
        ("foo(1)", "unknown function 'foo'"),
        ("result.x.bar()", "unknown function 'bar'"),
        ("reslt.type == 'x'", "unknown variable 'reslt': use input, result, state, step"),
        ("item == 1", "unknown variable 'item'"),
    ],
)
def test_cel_is_type_checked_where_it_can_be(expression: str, expected: str) -> None:
    assert expected in problems(edge_when(expression))


@pytest.mark.parametrize(
    "expression",
    [
        'result.type == "research_needed"',
        "size(result.strategies) > 1",
        "has(result.x) && result.x",
        "result.items.exists(i, i.ok) || result.items.all(j, j.n > 1)",
        'result.items.map(x, x * 2).filter(y, y > 2).size() == 0 || step.status == "failed"',
        "type(result.n) == int && result.n + 1 > 2",
        'state.results["my-step"].verdict in ["ok", "fine"]',
        "step.attempts >= 3 ? false : true",
        "1 + 2 == 3",
        "true",
        'result.x.matches("^[a-z]+(-[0-9]+)?$") && result.y.matches(r"\\d+")',
        "size(result.xs) == result.xs.size() && [1, 2].exists(x, x == size([3, 4]))",
        'result.x.contains("a, b") && !result.x.startsWith("(") && result.x.endsWith(")")',
        'timestamp(result.at).getHours() > 1 && duration("90s") > duration(result.d)',
        "result.n > -9223372036854775807 - 1 && result.n - 1 > 0 && result.n * -1 + 2 > 0",
        "result.u < 18446744073709551614u + 1u",
        'int("42") == result.n',
    ],
)
def test_valid_conditions_pass_the_checks(expression: str) -> None:
    parse_workflow_spec(edge_when(expression))


def test_input_and_for_each_see_their_own_variables() -> None:
    parse_workflow_spec({"steps": [{"name": "a", "pool": "p", "input": "[item, index, input, state.input]"}]})
    text = problems({"steps": [{"name": "a", "pool": "p", "forEach": "[1, 2].size()"}]})
    assert "forEach must give a list; this one always gives 2" in text


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"steps": [{"name": "x" * 1_000_000, "pool": "p"}]}, "spec.steps[0].name"),
        ({"steps": [{"name": "a", "pool": "P" * 1_000_000}]}, "spec.steps[0].pool"),
        ({"steps": [{"name": "a", "pool": "p"}], "priority": "u" * 1_000_000}, "spec.priority"),
        ({"steps": [{"name": "a", "pool": "p", "k" * 1_000_000: 1}]}, "spec.steps[0]['kkkk"),
        (edge_when("(" + "x" * 4000), "spec.edges[0].when"),
        (edge_when("result." + "y" * 4000 + " +"), "spec.edges[0].when"),
        ({"steps": [{"name": "a", "pool": "p"}] * 300}, "spec.steps"),
        ({"steps": [{"name": f"s{i}", "pool": "p"} for i in range(200)]}, "spec.steps[1]"),
    ],
)
def test_messages_repeat_at_most_a_short_prefix_of_a_bad_value(data: dict[str, Any], field: str) -> None:
    text = problems(data)
    assert text.startswith(field), text[:300]
    assert all(len(line) <= 400 for line in text.splitlines()), max(text.splitlines(), key=len)[:300]
    assert len(text) <= 21 * 400


def test_clip_shows_a_prefix_and_the_length() -> None:
    assert clip("short") == "'short'"
    assert clip("x" * 1000) == f"{'x' * 60!r}... (1000 characters)"
    assert clip(list(range(10_000))).startswith("list of 10000 items")
    assert clip(None) == "None"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"steps": [{"name": "a", "pool": "p", "timeout_seconds": 5}]},
            "spec.steps[0].timeout_seconds: Extra inputs are not permitted: fields are camelCase, "
            "write 'timeoutSeconds'",
        ),
        ({"steps": [{"name": "a", "pool": "p"}], "max_step_runs": 5}, "spec.max_step_runs: Extra inputs"),
        (
            {"steps": [{"name": "a", "pool": "p"}], "input": {"blob": "x" * 600_000}},
            "spec.input: Value error, input is 600011 bytes of JSON, over the limit of 524288",
        ),
        ({"steps": [{"name": "a", "pool": "p"}], "input": _nested(70)}, "input nests more than 64 levels"),
        ({"steps": [{"name": "a", "pool": "p", "params": {"x": "y" * 70_000}}]}, "params is 70008 bytes"),
        ({"steps": [{"name": "a", "pool": "p"}], "timeoutSeconds": float("nan")}, "spec.timeoutSeconds"),
        ({"steps": [{"name": "a", "pool": "p"}], "timeoutSeconds": float("inf")}, "spec.timeoutSeconds"),
    ],
)
def test_specs_accepted_before_are_refused(data: dict[str, Any], expected: str) -> None:
    assert expected.replace("Value error, ", "") in problems(data)


def _nested_dicts(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("data", "where"),
    [
        # enum fields: pydantic's error formats the value's repr, which overflowed the stack
        ({"steps": [{"name": "a", "pool": "p"}], "shutdown": _nested_dicts(5000)}, "spec.shutdown.k.k"),
        ({"steps": [{"name": "a", "pool": "p", "kind": _nested(5000)}]}, "spec.steps[0].kind[0][0]"),
        ({"steps": [{"name": "a", "pool": "p", "join": _nested(5000)}]}, "spec.steps[0].join[0]"),
        (
            {"steps": [{"name": "a", "pool": "p"}], "budget": {"onExceed": _nested(5000)}},
            "spec.budget.onExceed",
        ),
        ({"steps": [{"name": "a", "pool": "p"}], "input": _nested(100_000)}, "spec.input[0][0]"),
        (
            {"steps": [{"name": "a", "pool": "p"}], "input": {"k" * 100_000: _nested_dicts(100)}},
            "spec.input.kkk",
        ),
    ],
)
def test_a_deeply_nested_value_is_a_message_not_a_recursion_error(data: dict[str, Any], where: str) -> None:
    text = problems(data)
    assert text.startswith(where), text
    assert "nests more than 72 levels deep" in text
    assert len(text) < 400  # the path stops at the limit, and is cut
    # the same through a whole document (codeforge run's path)
    document = {"kind": "Workflow", "metadata": {"name": "w"}, "spec": data}
    with pytest.raises(WorkflowSpecError) as info:
        WorkflowManifest.parse(document)
    assert str(info.value).startswith(where), str(info.value)


def test_the_python_names_still_build_models_in_code() -> None:
    step = Step(name="a", pool="p", timeout_seconds=5)
    assert step.timeout_seconds == 5


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"apiVersion": "codeforge.ai/v2"}, "apiVersion: Input should be 'codeforge.ai/v1alpha1'"),
        ({"sepc": {}}, "sepc: Extra inputs are not permitted"),
    ],
)
def test_manifests_accepted_before_are_refused(change: dict[str, Any], expected: str) -> None:
    document = {
        "kind": "Workflow",
        "metadata": {"name": "w"},
        "spec": {"steps": [{"name": "a", "pool": "p"}]},
    }
    with pytest.raises(ValidationError) as info:
        WorkflowManifest.parse(document | change)
    assert expected in format_validation_error(info.value, prefix="")


# --- a second fuzzing pass: lax types, odd keys, and messages that did not say the fix ---------------------


def with_step(**fields: Any) -> dict[str, Any]:
    return {"steps": [{"name": "a", "pool": "p", **fields}]}


def with_top(**fields: Any) -> dict[str, Any]:
    return {"steps": [{"name": "a", "pool": "p"}], **fields}


#: Values pydantic's lax mode turned into numbers or booleans (`true` -> 1, "3" -> 3, "yes" -> True), which
#: the CRD's `type: integer|number|boolean` refuses: `codeforge run` accepted what `kubectl apply` would not.
LAX_VALUES = [
    (with_top(timeoutSeconds=True), "spec.timeoutSeconds: Input should be a valid number: write a number"),
    (with_top(timeoutSeconds="30"), "spec.timeoutSeconds: Input should be a valid number"),
    (with_top(maxStepRuns="5"), "spec.maxStepRuns: Input should be a valid integer: write a whole number"),
    (with_top(maxTasksInFlight=True), "spec.maxTasksInFlight: Input should be a valid integer"),
    (with_top(ttlSecondsAfterFinished="60"), "spec.ttlSecondsAfterFinished: Input should be a valid integer"),
    (with_top(suspend="yes"), "spec.suspend: Input should be a valid boolean: write true or false"),
    (with_top(suspend=1), "spec.suspend: Input should be a valid boolean"),
    (with_top(ttlDeletesWorkflow="true"), "spec.ttlDeletesWorkflow: Input should be a valid boolean"),
    (with_top(fairShare={"weight": "2"}), "spec.fairShare.weight: Input should be a valid integer"),
    (with_top(fairShare={"maxConcurrency": True}), "spec.fairShare.maxConcurrency: Input should be a valid"),
    (with_top(budget={"maxTokens": "10"}), "spec.budget.maxTokens: Input should be a valid integer"),
    (with_top(budget={"maxCost": "1.5"}), "spec.budget.maxCost: Input should be a valid number"),
    (with_step(parallel="3"), "spec.steps[0].parallel: Input should be a valid integer"),
    (with_step(parallel=True), "spec.steps[0].parallel: Input should be a valid integer"),
    (with_step(timeoutSeconds="5"), "spec.steps[0].timeoutSeconds: Input should be a valid number"),
    (with_step(retries={"max": "2"}), "spec.steps[0].retries.max: Input should be a valid integer"),
    (with_step(retries={"backoffSeconds": True}), "spec.steps[0].retries.backoffSeconds: Input should be"),
    (with_step(parallel=2, workspace={"merge": "true"}), "spec.steps[0].workspace.merge: Input should be a"),
]


@pytest.mark.parametrize(("data", "expected"), LAX_VALUES)
def test_numbers_and_booleans_are_typed_as_the_crd_types_them(data: dict[str, Any], expected: str) -> None:
    assert expected in problems(data)


def test_a_number_field_takes_an_integer() -> None:
    parsed = parse_workflow_spec(
        with_top(
            timeoutSeconds=60, budget={"maxCost": 5}, steps=[{"name": "a", "pool": "p", "timeoutSeconds": 5}]
        )
    )
    assert (parsed.timeout_seconds, parsed.steps[0].timeout_seconds) == (60, 5)
    assert parsed.budget is not None
    assert parsed.budget.max_cost == 5


@pytest.mark.parametrize("vote", ["a\x1b[31m", "choice\n", "\tchoice", " choice", "choice ", "\u202echoice"])
def test_vote_field_is_a_printable_field_name(vote: str) -> None:
    text = problems(with_step(parallel=3, join="majority", voteField=vote))
    assert text.startswith("spec.steps[0].voteField: "), text
    assert "is not a result field name: use printable characters" in text
    assert text.isprintable(), text  # no escape sequence, newline or direction override


def test_vote_field_takes_any_printable_name() -> None:
    for vote in ("decision", "my choice", "décision", "a.b"):
        assert (
            parse_workflow_spec(with_step(parallel=3, join="majority", voteField=vote)).steps[0].vote_field
            == vote
        )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_step(params={1: "x"}),
            'spec.steps[0].params[1]: keys must be strings: quote this one ("1": ...)',
        ),
        (
            with_step(params={None: "x"}),
            'spec.steps[0].params[null]: keys must be strings: quote this one ("null"',
        ),
        (with_step(params={True: 1}), "spec.steps[0].params[true]: keys must be strings"),
        (
            with_step(params={10**5000: 1}),
            "spec.steps[0].params[an integer of about 5001 digits]: keys must be",
        ),
        (
            {"steps": [{"name": "a", "pool": "p"}], 1: 2},
            "spec[1]: the key 1 is not a field name: remove it or check its spelling",
        ),
        ({"steps": [{"name": "a", "pool": "p"}], None: 2}, "spec[null]: the key null is not a field name"),
        (
            {"steps": [{"name": "a", "pool": "p", 1.5: 1}]},
            "spec.steps[0][1.5]: the key 1.5 is not a field name",
        ),
    ],
)
def test_a_key_that_is_no_string_shows_as_written(data: dict[Any, Any], expected: str) -> None:
    text = problems(data)
    assert text.startswith(expected), text
    assert "[key]" not in text


def test_a_deep_value_under_an_odd_key_shows_no_control_characters() -> None:
    text = problems(with_top(input={"\x1b[31m": _nested(100)}))
    assert text.startswith("spec.input.\\x1b[31m[0][0]"), text[:100]
    assert "\x1b" not in text


@pytest.mark.parametrize(
    ("key", "shown"),
    [(None, "[null]"), (True, "[true]"), (1, "[1]"), (10**5000, "[an integer")],
    ids=["null", "true", "1", "huge"],
)
def test_a_deep_value_under_a_key_that_is_no_string_shows_it_as_yaml_writes_it(
    key: object, shown: str
) -> None:
    text = problems(with_top(input={key: _nested(100)}))
    assert text.startswith(f"spec.input{shown}"), text[:100]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('duration("99999999999h")', 'this one always gives duration("9223372036.854775s")'),
        ('duration("-1.5s")', 'this one always gives duration("-1.5s")'),
        ('timestamp("2020-01-01T00:00:00Z")', 'always gives timestamp("2020-01-01T00:00:00Z")'),
        ('duration("5x") > duration("1s")', 'duration() takes a string such as "1h30m", "90s" or "1.5s"'),
        ('timestamp("bad") < timestamp("2020-01-01T00:00:00Z")', "timestamp() takes an RFC 3339 string"),
        ('"a".matches("(")', "'(' is not a valid regular expression: unclosed group"),
        (
            '"a".matches("a{1000}{1000}")',
            "is not a valid regular expression: Compiled regex exceeds size limit",
        ),
        ("[].all()", "all() takes a variable and an expression, e.g. list.all(x, x > 0)"),
        ("result.xs.exists(x)", "exists() takes a variable and an expression"),
        ("result.xs.map(x, y, z, w) == []", "map() takes a variable and an expression"),
        ("size(1, 2) == 1", "size() takes 1 argument, not 2: write size(x) or x.size()"),
        # On data too (they passed validation and failed every run): a regex literal is compiled now, and a
        # known function is called as the package calls it.
        ('result.x.matches("(")', "when: '(' is not a valid regular expression: unclosed group"),
        ("result.x.matches('(?=x)')", "'(?=x)' is not a valid regular expression: look-around"),
        ('result.x.matches("""a{2,1}""")', "'a{2,1}' is not a valid regular expression: invalid repetition"),
        ("size(result, 2) > 0", "when: size() takes 1 argument, not 2: write size(x) or x.size()"),
        ("result.xs.size(2) > 0", ".size() takes no argument, not 1: write size(x) or x.size()"),
        ('result.x.contains() || result.x.contains("a")', ".contains() takes 1 argument, not 0"),
        ('contains(result.x, "a")', "contains() is a method, called on a value: write s.contains(substring)"),
        ("result.n.int() > 0", "int() is a function, not a method: write int(x)"),
        ('timestamp(result.at).getHours("UTC") > 1', "write t.getHours() (timestamps are UTC: no time zone"),
        ('result.d > duration("5x")', 'duration("5x") is an error: duration() takes a string such as'),
        # Overflows say the range, not the package's words (`on Timestamp(...) and Duration(TimeDelta {...`).
        ("9223372036854775807 + 1 > 0", "9223372036854775807 + 1 is an error: integer overflow: CEL"),
        ("result.n < -9223372036854775808 - 1", "-9223372036854775808 - 1 is an error: integer overflow"),
        ("-9223372036854775808 / -1 < 0", "always fails: integer overflow: CEL integers are 64-bit, from -9"),
        ("0u - 1u > result.u", "0u - 1u is an error: unsigned integer overflow: CEL unsigned"),
        ("result.n > int('99999999999999999999')", "int() overflows: CEL integers are 64-bit"),
        (
            'timestamp("9999-12-31T23:59:59Z") + duration("1s") > timestamp("2024-01-01T00:00:00Z")',
            "always fails: timestamp overflow: CEL timestamps are between 0001-01-01T00:00:00Z and 9999",
        ),
        ("double('abc') > result.n", "double('abc') is an error: double(): string parse error"),
    ],
)
def test_cel_failures_say_what_to_write(expression: str, expected: str) -> None:
    text = problems(edge_when(expression))
    assert expected in text, text
    assert "\n" not in text
    assert "TimeDelta" not in text
    assert "Arithmetic overflow" not in text
    assert "Function '" not in text
    assert "timedelta" not in text
    assert "unknown function" not in text
    assert not text.endswith(":")


@pytest.mark.parametrize(
    "data",
    [with_top(priority=10**5000), with_step(priority=-(10**5000)), with_top(priority="9" * 5000)],
)
def test_a_huge_priority_is_a_short_message(data: dict[str, Any]) -> None:
    text = problems(data)
    assert "unknown priority" in text, text
    assert "use one of CRITICAL (1)" in text, text
    assert "set_int_max_str_digits" not in text
    assert len(text) < 300


def test_validation_compiles_regex_literals_within_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short regex can take ~70 ms to compile (`\\w{200}`) and validation runs on the operator's loop: past
    the budget (0.2 s, then 50 ms a second) literals are left to the run, where the sandbox evaluates them."""
    compiled: list[str] = []
    real = cel.evaluate

    def counting(expression: str) -> object:
        compiled.append(expression)
        return real(expression)

    monkeypatch.setattr(cel, "evaluate", counting)
    steps = [{"name": f"s{i}", "pool": "p"} for i in range(41)]
    edges = [
        {"from": "s0", "to": f"s{i}", "when": f'result.x.matches("\\\\w{{{150 + i}}}")'} for i in range(1, 41)
    ]
    parse_workflow_spec({"steps": steps, "edges": edges})
    regexes = [e for e in compiled if e.startswith('"".matches(')]
    assert 1 <= len(regexes) < 20  # ~60 ms each: the 0.2 s burst holds a few, not 40
    # A budget left full checks a bad literal again.
    cel_check._regex_budget.left = cel_check._regex_budget.burst
    assert "is not a valid regular expression" in problems(
        {"steps": steps[:2], "edges": [{"from": "s0", "to": "s1", "when": 'result.x.matches("(")'}]}
    )
