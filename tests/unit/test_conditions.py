"""`orchestrator.conditions.evaluate`: plain field paths are looked up directly, with CEL's value; anything
else, a missing field included, is CEL's."""

from __future__ import annotations

from typing import Any

import pytest

from codeforge.api.workflow import compile_cel
from codeforge.orchestrator.conditions import ConditionError, edge_matches, evaluate, select_input

VARIABLES: dict[str, Any] = {
    "state": {"input": {"n": 1, "tags": ["a", 2.5, None]}, "results": {"a": {"result": {"type": "x"}}}},
    "input": {"n": 1, "tags": ["a", 2.5, None]},
    "result": {"ok": True, "count": 3},
}


@pytest.mark.parametrize(
    "expression",
    ["state.input", "input.n", "input.tags", "state . results . a . result . type", "result.ok", "result"],
)
def test_a_field_path_has_the_value_cel_gives(expression: str) -> None:
    assert evaluate(expression, VARIABLES) == compile_cel(expression).execute(VARIABLES)


def test_a_field_path_is_the_value_itself_not_a_copy() -> None:
    assert evaluate("state.input", VARIABLES) is VARIABLES["state"]["input"]


@pytest.mark.parametrize("expression", ["result.count + 1", "size(input.tags)", "true", "input.n == 1"])
def test_other_expressions_are_cels(expression: str) -> None:
    assert evaluate(expression, VARIABLES) == compile_cel(expression).execute(VARIABLES)


def test_a_missing_field_is_cels_error() -> None:
    with pytest.raises(ConditionError, match="cannot be evaluated"):
        select_input("state.results.zz", VARIABLES, "spec.steps[0].input")
    assert edge_matches("result.missing", VARIABLES, "spec.edges[0].when") is False
    with pytest.raises(ConditionError, match="not true or false"):
        edge_matches("result.count", VARIABLES, "spec.edges[0].when")
