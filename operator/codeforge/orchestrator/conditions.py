"""CEL at run time: `when` conditions on edges, `input` selectors and `forEach` lists of steps.

Expressions are compiled once (at spec validation, cached, always behind the size check of
`codeforge.api.cel_check`); one evaluation costs about 40 us. Messages repeat at most a prefix of an
expression or a value (`clip`): both come from users.
The variables are plain JSON: `state` ({input, results}), `input` (= state.input), and on edges `result`
(the finished step's result) and `step` ({name, status, error, attempts}).
"""

from __future__ import annotations

from typing import Any

from codeforge.api.limits import clip, clip_text
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
        raise ConditionError(f"{where}: condition {clip(expression)} gave {clip(value)}, not true or false")
    return value


def select_input(expression: str | None, variables: dict[str, Any], where: str) -> Any:
    if expression is None:
        return variables["state"]
    try:
        return evaluate(expression, variables)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ConditionError(
            f"{where}: {clip(expression)} cannot be evaluated: {clip_text(str(exc), 300)}"
        ) from None


def for_each_items(expression: str, variables: dict[str, Any], where: str) -> list[Any]:
    try:
        value = evaluate(expression, variables)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ConditionError(
            f"{where}: {clip(expression)} cannot be evaluated: {clip_text(str(exc), 300)}"
        ) from None
    if not isinstance(value, list | tuple):
        raise ConditionError(
            f"{where}: {clip(expression)} gave {type(value).__name__} {clip(value)}, not a list"
        )
    return list(value)
