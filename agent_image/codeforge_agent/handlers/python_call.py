"""The `python` handler: call a user function `module:function` with the task.

This is how users plug in their own LangChain or LangGraph agents. The function may be sync or async; it gets
the Task (and, if it takes a second argument, the TaskContext) and returns JSON (a pydantic model is
dumped to JSON for it). For a task with a workspace, `context.workspace` is the path of its Git worktree
(a function without a context parameter but with a `workspace` keyword parameter gets it there); what the
function leaves in it is committed after it returns. Sync functions run in a
thread pool sized to the agent's concurrency so they never block heartbeats. A target that cannot be
imported does not crash the agent: every task fails with the reason, so the mistake shows on the tasks.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel

from codeforge.api.task import Task
from codeforge_agent.handlers.base import HandlerError, TaskContext, ensure_json


def load_target(target: str) -> Callable[..., Any]:
    """Import `module:function` (the function part may be dotted: `pkg.mod:Class.method`)."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(
            f"python handler: target {target!r} is not of the form 'module:function' "
            "(set --python-function / CODEFORGE_PYTHON_FUNCTION, e.g. 'my_agents.research:run')",
            retryable=False,
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time error of user code is a configuration error here
        raise HandlerError(
            f"python handler: cannot import module {module_name!r} of {target!r}: "
            f"{type(exc).__name__}: {exc} (install the package in the image or put it on PYTHONPATH)",
            retryable=False,
        ) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerError(
                f"python handler: {module_name!r} has no attribute {attr_path!r} (target {target!r})",
                retryable=False,
            ) from None
    if not callable(obj):
        raise HandlerError(f"python handler: {target!r} is not callable", retryable=False)
    return obj  # type: ignore[no-any-return]


def _wants_context(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    # `def run(task, workspace)` takes the worktree path by keyword, not the context.
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "workspace"
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _has_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameter = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        parameter.KEYWORD_ONLY,
        parameter.POSITIONAL_OR_KEYWORD,
    )


class PythonHandler:
    kind = "python"

    def __init__(self, target: str | Callable[..., Any], *, threads: int = 4) -> None:
        self.target = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
        self._fn: Callable[..., Any] | None = None
        self._error: HandlerError | None = None
        try:
            self._fn = load_target(target) if isinstance(target, str) else target
        except HandlerError as exc:
            self._error = exc  # reported on every task, see module docstring
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="cf-handler")
        self._with_context = self._fn is not None and _wants_context(self._fn)
        self._wants_workspace = self._fn is not None and _has_keyword(self._fn, "workspace")

    @property
    def load_error(self) -> str | None:
        return self._error.message if self._error else None

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        if self._fn is None:
            assert self._error is not None
            raise self._error
        args: tuple[Any, ...] = (task, context) if self._with_context else (task,)
        kwargs: dict[str, Any] = {}
        if self._wants_workspace and not self._with_context and context.workspace is not None:
            kwargs["workspace"] = context.workspace
        if inspect.iscoroutinefunction(self._fn):
            result = await self._fn(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, functools.partial(self._fn, *args, **kwargs))
            if inspect.isawaitable(result):  # a sync wrapper that returns a coroutine
                result = await result
        if isinstance(result, BaseModel):  # LangChain / LangGraph objects are pydantic models
            result = result.model_dump(mode="json")
        return ensure_json(result, f"python handler {self.target!r}")

    async def aclose(self) -> None:
        # A sync function stuck past its timeout cannot be interrupted; do not wait for it at exit.
        self._executor.shutdown(wait=False, cancel_futures=True)
