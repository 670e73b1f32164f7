"""Agent functions for retry tests: fail until a marker file exists, always fail, kill their own agent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from codeforge.api.task import Task
from codeforge_agent.handlers import HandlerError


def fail_until_marker(task: Task) -> dict[str, Any]:
    assert isinstance(task.payload, dict)
    if not Path(task.payload["marker"]).exists():
        raise HandlerError("marker missing: the step is not fixed yet", retryable=False)
    return {"fixed": True, "task": task.id}


def _runs(task: Task) -> tuple[dict[str, Any], int]:
    """Append this run to `payload.log` (a line per handler execution); returns the payload and run number."""
    assert isinstance(task.payload, dict)
    log = Path(task.payload["log"])
    with log.open("a") as out:
        out.write(f"{task.id} {os.getpid()}\n")
    return task.payload, len(log.read_text().splitlines())


def always_flaky(task: Task) -> None:
    """Every run fails with a retryable error (a flaky dependency that never recovers)."""
    _runs(task)
    raise HandlerError("flaky dependency: connection reset", retryable=True)


def die_first_runs(task: Task) -> dict[str, Any]:
    """SIGKILLs its own agent process on the first `payload.deaths` runs (an OOM kill, an eviction); then
    answers. Counts runs in `payload.log`."""
    payload, run = _runs(task)
    if run <= int(payload["deaths"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"run": run, "pid": os.getpid()}


def slow_until_marker(task: Task) -> dict[str, Any]:
    """Runs for a long time until `payload.marker` exists (so a drain interrupts it); then answers at once."""
    payload, run = _runs(task)
    if not Path(payload["marker"]).exists():
        time.sleep(float(payload.get("seconds", 60)))
    return {"run": run}
