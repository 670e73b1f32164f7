"""CEL at run time: `when` conditions on edges, `input` selectors and `forEach` lists of steps.

Expressions are compiled once (at spec validation, cached, always behind the size check of
`codeforge.api.cel_check`); one evaluation costs about 40 us. One whose cost the data decides (a
comprehension, `matches`, many `+`: `cel_check.data_driven`) runs in `codeforge.api.cel_sandbox`'s worker
process under a time and memory limit; overrunning it fails the run with a message naming the field.
Messages repeat at most a prefix of an expression or a value (`clip`): both come from users.
The variables are plain JSON: `state` ({input, results}), `input` (= state.input), and on edges `result`
(the finished step's result) and `step` ({name, status, error, attempts}).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from codeforge.api import cel_sandbox
from codeforge.api.cel_check import data_driven, tokenize
from codeforge.api.cel_sandbox import EvaluationLimit
from codeforge.api.limits import clip, clip_text
from codeforge.api.workflow import compile_cel

#: What an evaluation raises for data it cannot handle (a missing field, a type mismatch, a division by 0).
EVALUATION_ERRORS = (KeyError, TypeError, RuntimeError, ValueError, ArithmeticError)


class ConditionError(ValueError):
    """An expression evaluated to something unusable (a non-bool `when`, a non-list `forEach`)."""


#: A plain field path (`state.input`, `result.type`): most `input` selectors and many conditions.
_FIELD_PATH = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*\s*")


@lru_cache(maxsize=1024)
def _field_path(expression: str) -> tuple[str, ...] | None:
    if not _FIELD_PATH.fullmatch(expression):
        return None
    return tuple(name.strip() for name in expression.split("."))


@lru_cache(maxsize=1024)
def _sandboxed(expression: str) -> frozenset[str] | None:
    """The variables a data-driven expression reads (it is evaluated in the sandbox); None for the rest."""
    program = compile_cel(expression)  # behind the size check, before the tokenizer sees it
    if not data_driven(tokenize(expression)):
        return None
    return frozenset(program.variables())


async def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """The expression's value. A field path that leads through maps to a value is looked up directly: CEL
    converts every variable (the whole run state) on each call, ~0.1 ms a step with a few results, for the
    same value. Anything else, a missing field included, is CEL's, errors and all; a data-driven expression
    is the sandbox's, which may also raise EvaluationLimit."""
    path = _field_path(expression)
    if path is not None:
        value: Any = variables
        for name in path:
            if not isinstance(value, dict) or name not in value:
                break
            value = value[name]
        else:
            return value
    names = _sandboxed(expression)
    if names is not None:
        return await cel_sandbox.evaluate(expression, variables, names)
    return compile_cel(expression).execute(variables)


async def edge_matches(expression: str, variables: dict[str, Any], where: str) -> bool:
    """Evaluate a `when`. A missing field (`result.type` on a result without `type`) is simply false, so
    conditions read like routing rules; a value that is not a bool, or an evaluation stopped at its limit, is
    an error naming the edge (routing on as if false could run the wrong step)."""
    try:
        value = await evaluate(expression, variables)
    except EvaluationLimit as exc:
        raise ConditionError(f"{where}: condition {clip(expression)} was not evaluated: {exc}") from None
    except EVALUATION_ERRORS:
        return False
    if not isinstance(value, bool):
        raise ConditionError(f"{where}: condition {clip(expression)} gave {clip(value)}, not true or false")
    return value


async def select_input(expression: str | None, variables: dict[str, Any], where: str) -> Any:
    if expression is None:
        return variables["state"]
    try:
        return await evaluate(expression, variables)
    except (*EVALUATION_ERRORS, EvaluationLimit) as exc:
        raise ConditionError(
            f"{where}: {clip(expression)} cannot be evaluated: {clip_text(str(exc), 300)}"
        ) from None


async def for_each_items(expression: str, variables: dict[str, Any], where: str) -> list[Any]:
    try:
        value = await evaluate(expression, variables)
    except (*EVALUATION_ERRORS, EvaluationLimit) as exc:
        raise ConditionError(
            f"{where}: {clip(expression)} cannot be evaluated: {clip_text(str(exc), 300)}"
        ) from None
    if not isinstance(value, list | tuple):
        raise ConditionError(
            f"{where}: {clip(expression)} gave {type(value).__name__} {clip(value)}, not a list"
        )
    return list(value)
