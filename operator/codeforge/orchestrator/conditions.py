"""CEL at run time: `when` conditions on edges, `input` selectors and `forEach` lists of steps.

Expressions are compiled once (at spec validation, cached); one evaluation costs about 40 us.
The variables are plain JSON: `state` ({input, results}), `input` (= state.input), and on edges `result`
(the finished step's result) and `step` ({name, status, error, attempts}).
"""

from __future__ import annotations

from typing import Any

from codeforge.api.workflow import compile_cel


class ConditionError(ValueError):
    """An expression evaluated to something unusable (a non-bool `when`, a non-list `forEach`)."""


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    return compile_cel(expression).execute(variables)


def edge_matches(expression: str, variables: dict[str, Any], where: str) -> bool:
    """Evaluate a `when`. A missing field (`result.type` on a result without `type`) is simply false, so
    conditions read like routing rules; a value that is not a bool is a spec error naming the edge."""
    try:
        value = evaluate(expression, variables)
    except (KeyError, TypeError, RuntimeError, ValueError):
        return False
    if not isinstance(value, bool):
        raise ConditionError(f"{where}: condition {expression!r} gave {value!r}, not true or false")
    return value


def select_input(expression: str | None, variables: dict[str, Any], where: str) -> Any:
    if expression is None:
        return variables["state"]
    try:
        return evaluate(expression, variables)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ConditionError(f"{where}: {expression!r} cannot be evaluated: {exc}") from None


def for_each_items(expression: str, variables: dict[str, Any], where: str) -> list[Any]:
    try:
        value = evaluate(expression, variables)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ConditionError(f"{where}: {expression!r} cannot be evaluated: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ConditionError(f"{where}: {expression!r} gave {type(value).__name__} {value!r}, not a list")
    return list(value)
