"""The one interface every handler kind implements, and the error a handler raises to fail a task.

A handler is an async callable `handler(task, context) -> JSON`. The claim loop owns leases, heartbeats,
timeouts and reporting; a handler only turns a Task into a JSON result, so the same handlers run in an
agent pod and in the orchestrator's embedded (in-process) mode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from codeforge.api.task import Task


class HandlerError(Exception):
    """A task failed in a way the handler understands; `message` is recorded on the task.

    `retryable=False` marks a permanent failure (bad input, bad configuration): the task becomes FAILED
    instead of being redelivered. `retry_delay` asks the queue to wait before the next attempt.
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_delay: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_delay = retry_delay


class RateLimitedError(HandlerError):
    """The provider refused the call for its rate limit (HTTP 429). With a rate-limit key (the pool's
    `spec.rateLimit`) the agent pauses the key for every agent for `retry_after` seconds and gives the task
    back unstarted, so it neither fails nor spends a retry; without one it is a retryable failure."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retryable=True, retry_delay=retry_after)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What the loop tells a handler about the run it is in."""

    agent_id: str
    attempt: int
    #: Seconds the handler has before the loop cancels it (None: no limit). Handlers that call out
    #: (command, http, openai) pass it on so the remote side gives up too.
    timeout: float | None
    log: logging.LoggerAdapter[logging.Logger]
    #: The task's Git worktree (issue #11), None when the task has no workspace. The command handler runs
    #: in it; python functions read it here; what they leave in it is committed after they succeed.
    workspace: Path | None = None


@runtime_checkable
class Handler(Protocol):
    """Turns a task into a JSON-serialisable result, or raises HandlerError."""

    #: The handler kind, e.g. "python", "command"; used in metrics and logs.
    kind: str

    async def __call__(self, task: Task, context: TaskContext, /) -> Any: ...

    async def aclose(self) -> None:
        """Release connections and threads when the agent stops."""
        ...


def task_json(task: Task) -> dict[str, Any]:
    """The task as plain JSON, as command, http and python-by-URL handlers receive it."""
    return task.model_dump(mode="json")


def ensure_json(result: Any, where: str) -> Any:
    """Refuse results that cannot be stored as JSON, naming who produced them."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HandlerError(
            f"{where} returned a value that is not JSON ({exc}): return dicts, lists, strings, numbers, "
            "booleans or None",
            retryable=False,
        ) from None
    return result


def tail(text: str | bytes, limit: int = 2000) -> str:
    """The last `limit` characters of a program's output, where its error usually is."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
