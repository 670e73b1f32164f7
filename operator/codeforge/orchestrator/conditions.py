"""CEL at run time: `when` conditions on edges, `input` selectors and `forEach` lists of steps.

Expressions are compiled once (at spec validation, cached, always behind the size check of
`codeforge.api.cel_check`); one evaluation costs about 40 us. Messages repeat at most a prefix of an
expression or a value (`clip`): both come from users.
The variables are plain JSON: `state` ({input, results}), `input` (= state.input), and on edges `result`
(the finished step's result) and `step` ({name, status, error, attempts}).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from codeforge.api.limits import clip, clip_text
from codeforge.api.workflow import compile_cel


class ConditionError(ValueError):
    """An expression evaluated to something unusable (a non-bool `when`, a non-list `forEach`)."""


#: A plain field path (`state.input`, `result.type`): most `input` selectors and many conditions.
_FIELD_PATH = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*\s*")


@lru_cache(maxsize=1024)
def _field_path(expression: str) -> tuple[str, ...] | None:
    if not _FIELD_PATH.fullmatch(expression):
        return None
    return tuple(name.strip() for name in expression.split("."))


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """The expression's value. A field path that leads through maps to a value is looked up directly: CEL
    converts every variable (the whole run state) on each call, ~0.1 ms a step with a few results, for the
    same value. Anything else, a missing field included, is CEL's, errors and all."""
    path = _field_path(expression)
    if path is not None:
        value: Any = variables
        for name in path:
            if not isinstance(value, dict) or name not in value:
                break
            value = value[name]
        else:
            return value
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
