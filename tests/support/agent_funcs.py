"""User functions for the `python` handler tests (imported by the agent as `support.agent_funcs:...`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from codeforge.api.task import Task


def shout(task: Task) -> dict[str, Any]:
    """A sync function: runs in the agent's thread pool."""
    return {"text": str(task.payload.get("text", "")).upper(), "attempt": task.attempts}


async def async_shout(task: Task, context: Any) -> dict[str, Any]:
    """An async function that also takes the context."""
    await asyncio.sleep(0)
    return {"text": str(task.payload.get("text", "")).upper(), "agent": context.agent_id}


async def hang(task: Task) -> None:
    await asyncio.sleep(3600)


def not_json(task: Task) -> object:
    return {"when": time}  # a module object is not JSON


def boom(task: Task) -> None:
    raise RuntimeError("model exploded")


NOT_CALLABLE = 42


async def maybe_hang(task: Task) -> dict[str, Any]:
    """Hangs when the payload says so (to hit the time limit), answers otherwise."""
    if task.payload.get("hang"):
        await asyncio.sleep(3600)
    return {"ok": task.id}


async def whoami(task: Task) -> dict[str, Any]:
    """Sleeps payload.seconds, then says which agent process ran it."""
    await asyncio.sleep(float(task.payload.get("seconds", 0)))
    return {"pid": os.getpid()}


def journal(task: Task) -> dict[str, Any]:
    """Appends a line per execution to $AGENT_TEST_JOURNAL (O_APPEND keeps lines whole across processes)."""
    line = f"{task.id} {os.getpid()}\n".encode()
    fd = os.open(os.environ["AGENT_TEST_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return {"pid": os.getpid()}


def hang_sync(task: Task) -> None:
    """A sync function that never returns in time: its thread cannot be interrupted."""
    time.sleep(3600)


def edit_workspace(task: Task, workspace: Any) -> dict[str, Any]:
    """A python handler that takes the worktree path by keyword and edits it."""
    from pathlib import Path

    root = Path(workspace)
    for name, content in (task.payload or {}).get("write", {}).items():
        (root / name).write_text(content)
    return {"files": sorted(p.name for p in root.iterdir() if p.name != ".git")}
