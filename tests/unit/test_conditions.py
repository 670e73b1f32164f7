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
async def test_a_field_path_has_the_value_cel_gives(expression: str) -> None:
    assert await evaluate(expression, VARIABLES) == compile_cel(expression).execute(VARIABLES)


async def test_a_field_path_is_the_value_itself_not_a_copy() -> None:
    assert await evaluate("state.input", VARIABLES) is VARIABLES["state"]["input"]


@pytest.mark.parametrize("expression", ["result.count + 1", "size(input.tags)", "true", "input.n == 1"])
async def test_other_expressions_are_cels(expression: str) -> None:
    assert await evaluate(expression, VARIABLES) == compile_cel(expression).execute(VARIABLES)


async def test_a_missing_field_is_cels_error() -> None:
    with pytest.raises(ConditionError, match="cannot be evaluated"):
        await select_input("state.results.zz", VARIABLES, "spec.steps[0].input")
    assert await edge_matches("result.missing", VARIABLES, "spec.edges[0].when") is False
    with pytest.raises(ConditionError, match="not true or false"):
        await edge_matches("result.count", VARIABLES, "spec.edges[0].when")


async def test_an_arithmetic_error_on_an_edge_is_false_and_in_an_input_names_the_field() -> None:
    # 3 / (3 - 3): ZeroDivisionError, an ArithmeticError rather than one of CEL's usual errors
    when = "result.count / (result.count - 3) > 1"
    assert await edge_matches(when, VARIABLES, "spec.edges[0].when") is False
    with pytest.raises(ConditionError, match=r"steps\[0\]\.input: .* cannot be evaluated: division by zero"):
        await select_input("result.count / (result.count - 3)", VARIABLES, "spec.steps[0].input")
