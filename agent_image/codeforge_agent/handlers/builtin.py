"""Built-in handlers for demos and load tests: `echo`, `sleep`, `fail`."""

from __future__ import annotations

import asyncio
from typing import Any

from codeforge.api.task import Task
from codeforge_agent.handlers.base import HandlerError, TaskContext


class EchoHandler:
    """Returns the payload unchanged: the cheapest possible handler, used to measure agent overhead."""

    kind = "echo"

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        return task.payload

    async def aclose(self) -> None:
        return None


class SleepHandler:
    """Sleeps `payload.seconds` (or a bare number payload), else `payload.input` when the step's `input`
    selects a number (each run's duration from its own input, as real steps vary), then returns the payload;
    simulates work."""

    kind = "sleep"

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        payload = task.payload
        seconds = payload.get("seconds") if isinstance(payload, dict) else payload
        if seconds is None and isinstance(payload, dict) and _is_number(payload.get("input")):
            seconds = payload["input"]
        if seconds is None:
            seconds = 1.0
        if not _is_number(seconds) or seconds < 0:
            raise HandlerError(
                f"sleep handler: payload.seconds must be a number >= 0, got {seconds!r}", retryable=False
            )
        await asyncio.sleep(float(seconds))
        return {"slept": float(seconds), "payload": payload}

    async def aclose(self) -> None:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class FailHandler:
    """Always fails with `payload.message`; `payload.retryable` (default true) picks retry or FAILED."""

    kind = "fail"

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        payload = task.payload if isinstance(task.payload, dict) else {}
        message = str(payload.get("message", "fail handler: this task fails on purpose"))
        raise HandlerError(message, retryable=bool(payload.get("retryable", True)))

    async def aclose(self) -> None:
        return None
