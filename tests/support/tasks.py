"""Small builders shared by the queue tests: unique pool names (so tests can share one server) and tasks."""

from __future__ import annotations

import uuid
from typing import Any

from codeforge.api.task import Priority, Task


def unique_pool(prefix: str = "t") -> str:
    """A pool name no other test uses, so every test can share the session's Redis servers."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_task(
    pool: str,
    task_id: str | None = None,
    *,
    priority: Priority | str | int = Priority.MEDIUM,
    payload: Any = None,
    max_attempts: int = 3,
    lease_seconds: float = 30.0,
    **fields: Any,
) -> Task:
    """A task with a fresh id unless one is given; the payload defaults to one that names the task."""
    task_id = task_id or f"task-{uuid.uuid4().hex[:12]}"
    return Task(
        id=task_id,
        pool=pool,
        priority=priority,  # the model's validator parses names and numbers too
        payload={"id": task_id} if payload is None else payload,
        max_attempts=max_attempts,
        lease_seconds=lease_seconds,
        **fields,
    )
