"""An agent function for retry tests: fails (not retryable) until a marker file exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codeforge.api.task import Task
from codeforge_agent.handlers import HandlerError


def fail_until_marker(task: Task) -> dict[str, Any]:
    assert isinstance(task.payload, dict)
    if not Path(task.payload["marker"]).exists():
        raise HandlerError("marker missing: the step is not fixed yet", retryable=False)
    return {"fixed": True, "task": task.id}
