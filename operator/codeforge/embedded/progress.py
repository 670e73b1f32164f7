"""The live progress view of `codeforge run`: one row per step, fed by the orchestrator's progress events."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from codeforge.api.workflow import WorkflowSpec
from codeforge.orchestrator import EventKind, ProgressEvent

_STYLES = {
    "pending": "dim",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "retrying": "magenta",
}


@dataclass
class StepRow:
    name: str
    pool: str
    status: str = "pending"
    runs: int = 0
    attempts: int = 0
    parts: int = 0
    started: float | None = None
    duration: float | None = None
    message: str = ""
    commit: str = ""  # spec.workspace: the latest visit's output commit (short)


@dataclass
class ProgressBoard:
    """Folds progress events into per-step rows; `render()` draws them, `line()` logs one event as text."""

    spec: WorkflowSpec
    rows: dict[str, StepRow] = field(default_factory=dict)
    status: str = "running"
    started: float = field(default_factory=time.time)
    workspace: str = ""  # spec.workspace: "ref @ base" once resolved, then "-> branch @ commit"

    def __post_init__(self) -> None:
        self.rows = {s.name: StepRow(s.name, s.pool) for s in self.spec.steps}

    def apply(self, event: ProgressEvent) -> None:
        row = self.rows.get(event.step)
        if event.kind is EventKind.WORKFLOW_FINISHED:
            self.status = event.status
        elif event.kind in (EventKind.WORKSPACE_RESOLVED, EventKind.WORKSPACE_PUBLISHED):
            self.workspace = self.workspace_line(event) or self.workspace
        if row is None:
            return
        if event.kind is EventKind.STEP_STARTED:
            row.status, row.runs, row.parts = "running", row.runs + 1, event.parts or 0
            row.started, row.duration, row.message = event.at, None, ""
        elif event.kind is EventKind.TASK_DISPATCHED:
            row.attempts = max(row.attempts, (event.attempt or 0) + 1)
            if row.status == "pending":  # resumed mid-step: no step_started was seen in this process
                row.status, row.started = "running", event.at
        elif event.kind is EventKind.ATTEMPT_FAILED:
            row.status, row.message = "retrying", event.message
        elif event.kind is EventKind.STEP_FINISHED:
            row.status, row.duration, row.message = event.status, event.duration, event.message
            row.commit = event.commit[:10] if event.commit else row.commit

    def render(self) -> Table:
        elapsed = time.time() - self.started
        title = f"workflow: {self.status} ({elapsed:.1f}s)" + (
            f"  {self.workspace}" if self.workspace else ""
        )
        table = Table(title=title, title_justify="left", expand=False)
        columns = ["step", "pool", "status", "runs", "attempts", "parts", "time"]
        with_commits = any(row.commit for row in self.rows.values()) or bool(self.workspace)
        for column in columns + (["commit"] if with_commits else []):
            table.add_column(column, no_wrap=True)
        table.add_column("message", overflow="fold")
        for row in self.rows.values():
            if row.duration is not None:
                took = f"{row.duration:.2f}s"
            elif row.started is not None:
                took = f"{time.time() - row.started:.1f}s"
            else:
                took = ""
            style = _STYLES.get(row.status, "")
            cells = [
                row.name, row.pool, f"[{style}]{row.status}[/]", str(row.runs or ""), str(row.attempts or ""),
                str(row.parts or ""), took,
            ]  # fmt: skip
            table.add_row(*cells, *([row.commit] if with_commits else []), row.message[:120])
        return table

    @staticmethod
    def workspace_line(event: ProgressEvent) -> str | None:
        detail = event.detail or {}
        if event.kind is EventKind.WORKSPACE_RESOLVED:
            return f"workspace: {detail.get('ref')} @ {event.commit[:10]}"
        if event.kind is EventKind.WORKSPACE_PUBLISHED:
            return f"workspace: branch {detail.get('branch')} @ {event.commit[:10]}"
        return None

    @classmethod
    def line(cls, event: ProgressEvent) -> str | None:
        """A log line for non-interactive output (only the transitions a reader cares about)."""
        if event.kind in (EventKind.WORKSPACE_RESOLVED, EventKind.WORKSPACE_PUBLISHED):
            return cls.workspace_line(event)
        if event.kind is EventKind.STEP_STARTED:
            return f"step {event.step}: started ({event.parts} task{'s' if event.parts != 1 else ''})"
        if event.kind is EventKind.TASK_DISPATCHED and event.status == "reattached":
            return f"step {event.step}: re-attached to task {event.task_id}"
        if event.kind is EventKind.ATTEMPT_FAILED:
            return f"step {event.step}: attempt {event.attempt} failed: {event.message}"
        if event.kind is EventKind.STEP_FINISHED:
            detail = f": {event.message}" if event.message else ""
            commit = f" -> {event.commit[:10]}" if event.commit else ""
            return f"step {event.step}: {event.status} in {event.duration or 0:.2f}s{commit}{detail}"
        if event.kind is EventKind.WORKFLOW_RESUMED:
            return "workflow: resumed from its checkpoint"
        return None


def console_for(stderr: bool = True) -> Console:
    return Console(stderr=stderr, highlight=False)
