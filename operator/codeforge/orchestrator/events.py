"""Progress events of a workflow run: what the CLI's live view and the operator's status consume."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class EventKind(enum.StrEnum):
    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_RESUMED = "workflow_resumed"  # restarted from a checkpoint
    STEP_STARTED = "step_started"  # the step's task(s) are about to be dispatched
    #: one task (fan-out part, attempt) is queued or re-attached; latency = the step became ready -> its
    #: first attempt's enqueue returned (None for a retry or a step resumed from a checkpoint)
    TASK_DISPATCHED = "task_dispatched"
    #: a task's outcome reached the run (for the metrics): duration = how long an agent held it,
    #: latency = its end -> this run woken by the notification (None when it had ended before the wait)
    TASK_FINISHED = "task_finished"
    ATTEMPT_FAILED = "attempt_failed"  # a task ended without success; a retry may follow
    APPROVAL_WAITING = "approval_waiting"  # an approval step waits for a decision (message: the question)
    STEP_FINISHED = "step_finished"  # the join is done: status succeeded or failed
    WORKSPACE_RESOLVED = "workspace_resolved"  # spec.workspace: the ref resolved to the run's base commit
    WORKSPACE_PUBLISHED = "workspace_published"  # the final commit was pushed to pushBranch
    USAGE = "usage"  # a task reported usage; detail: {"step": its step's sum, "total": the run's}
    BUDGET_EXCEEDED = "budget_exceeded"  # spec.budget reached at `step`; status: Fail or Suspend
    BUDGET_RAISED = "budget_raised"  # a suspended run's budget was raised above its usage: it goes on
    WORKFLOW_FINISHED = "workflow_finished"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    kind: EventKind
    workflow: str
    step: str = ""
    index: int | None = None
    attempt: int | None = None
    task_id: str = ""
    status: str = ""  # succeeded | failed | cancelled | reattached | queued
    message: str = ""
    duration: float | None = None  # seconds, on *_finished and attempt_failed
    latency: float | None = None  # seconds, on task_finished and task_dispatched
    parts: int | None = None  # fan-out width, on step_started
    agent: str = ""  # the agent(s) that ran the task(s), on attempt_failed and step_finished
    commit: str = ""  # spec.workspace runs: the step's output commit (step_finished), the resolved base
    #: (workspace_resolved) or the published commit (workspace_published)
    #: workspace_*: {ref/branch, base, commit, diffstat, files}; an approval step's step_finished:
    #: {"approval": its result}; approval_waiting: {"deadline": Unix time or None}
    detail: dict[str, Any] | None = None
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return {k: v for k, v in data.items() if v not in (None, "")}


EventSink = Callable[[ProgressEvent], None]


def ignore_events(_: ProgressEvent) -> None:
    return None
