"""Fold a Workflow run's progress events into its status (pure: no I/O, so tests call it directly).

The tracker starts from the status already stored (an operator restart keeps step times and visits), applies
each `ProgressEvent` in memory, and renders the whole `status` on demand; the status writer decides when to
send it (the tracker calls `on_change` after every change, which wakes the writer). Step transitions are
also kept as `KubeEvent`s, which become Kubernetes Events.

Conditions of a Workflow and their reasons:

| Type     | Status | Reason           | Meaning                                                             |
|----------|--------|------------------|---------------------------------------------------------------------|
| Invalid  | True   | InvalidSpec      | the spec cannot run; the message names each bad field               |
| Running  | True   | Running          | steps are being dispatched                                          |
| Running  | False  | Pending          | accepted, not started yet                                           |
| Running  | False  | Suspended        | spec.suspend is true: nothing new is dispatched                     |
| Running  | False  | BudgetExceeded   | spec.budget reached (onExceed Suspend): the message names the step  |
| Running  | False  | Stopping         | spec.shutdown Stop: nothing new is dispatched; running tasks finish |
| Running  | False  | Finished         | the run ended (see Finished)                                        |
| Finished | True   | Succeeded        | every step on the taken path succeeded                              |
| Finished | True   | Failed           | a step failed with no edge routing its failure, or the run errored  |
| Finished | True   | Cancelled        | the run was cancelled                                               |
| Finished | True   | BudgetExceeded   | spec.budget reached (onExceed Fail): the message names the step     |
| Finished | True   | Stopped          | spec.shutdown Stop (phase Cancelled): running tasks finished first  |
| Finished | True   | Terminated       | spec.shutdown Terminate (phase Cancelled): running tasks cancelled  |
| Finished | False  | InProgress       | not finished                                                        |
| Degraded | True   | QueueUnreachable | the queue or checkpoint store cannot be reached; retried w/ backoff |
| Degraded | False  | AsExpected       | nothing is wrong                                                    |
| PoolNotFound | True | PoolNotFound   | a step names an AgentPool that does not exist; the run waits for it |
| PoolNotFound | False | PoolsFound    | every pool the steps name exists                                    |
| Expired  | True   | TTLExpired       | ttlSecondsAfterFinished passed: the run's Redis data was removed    |

A step of `kind: approval` shows phase Waiting while it waits, and its decision in `steps[].approval`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.api.outcome import Outcome
from codeforge.api.workflow import WorkflowSpec
from codeforge.api.workflow_status import (
    StepPhase,
    StepStatus,
    WorkflowPhase,
    WorkspaceStatus,
    progress,
    truncate,
)
from codeforge.controller.kstatus import (
    ConditionValue,
    EventType,
    KubeEvent,
    merge_conditions,
    now_rfc3339,
    rfc3339,
)
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowOutcome

JSON = dict[str, Any]
#: Which step phases count as finished for the progress column.
FINISHED_STEPS: Final = frozenset({StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.CANCELLED})
ACTIVE_STEPS: Final = frozenset({StepPhase.RUNNING, StepPhase.RETRYING, StepPhase.WAITING})
_OUTCOME_PHASES: Final[dict[str, WorkflowPhase]] = {
    Outcome.SUCCEEDED: WorkflowPhase.SUCCEEDED,
    Outcome.FAILED: WorkflowPhase.FAILED,
    Outcome.CANCELLED: WorkflowPhase.CANCELLED,
}
_STEP_PHASES: Final[dict[str, StepPhase]] = {
    Outcome.SUCCEEDED: StepPhase.SUCCEEDED,
    Outcome.FAILED: StepPhase.FAILED,
    Outcome.CANCELLED: StepPhase.CANCELLED,
}


#: The Event reasons of a step's routine progress: posted only with CODEFORGE_WORKFLOW_STEP_EVENTS
#: (status.steps shows them either way).
ROUTINE_STEP_REASONS: Final = frozenset({"StepStarted", "StepSucceeded"})
_FINISH_REASONS: Final = frozenset({"BudgetExceeded", "Stopped", "Terminated"})


class ConditionType(enum.StrEnum):
    INVALID = "Invalid"
    RUNNING = "Running"
    FINISHED = "Finished"
    DEGRADED = "Degraded"
    POOL_NOT_FOUND = "PoolNotFound"
    EXPIRED = "Expired"  # written by `expiry` when the TTL passed


class Reason(enum.StrEnum):
    INVALID_SPEC = "InvalidSpec"
    RUNNING = "Running"
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    FINISHED = "Finished"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    IN_PROGRESS = "InProgress"
    QUEUE_UNREACHABLE = "QueueUnreachable"
    AS_EXPECTED = "AsExpected"
    POOL_NOT_FOUND = "PoolNotFound"
    POOLS_FOUND = "PoolsFound"
    BUDGET_EXCEEDED = "BudgetExceeded"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    TERMINATED = "Terminated"


def invalid_status(
    existing: Mapping[str, Any], message: str, generation: int | None, now: str | None = None
) -> JSON:
    """The status of a Workflow whose spec cannot run: Failed, with an Invalid condition naming the fields."""
    now = now or now_rfc3339()
    conditions = merge_conditions(
        existing.get("conditions") or [],
        [
            ConditionValue(ConditionType.INVALID, True, Reason.INVALID_SPEC, message),
            ConditionValue(ConditionType.RUNNING, False, Reason.FINISHED, "the spec is invalid"),
            ConditionValue(ConditionType.FINISHED, True, Reason.FAILED, "the spec is invalid"),
        ],
        now,
        generation,
    )
    first_line = message.splitlines()[0] if message else "invalid spec"
    return {
        "phase": WorkflowPhase.FAILED.value,
        "message": truncate(f"invalid spec: {first_line}"),
        "observedGeneration": generation,
        "completionTime": existing.get("completionTime") or now,
        "conditions": conditions,
    }


def pending_status(existing: Mapping[str, Any], total_steps: int, generation: int | None) -> JSON:
    """A valid Workflow the run has not picked up yet (also after its spec was fixed)."""
    conditions = merge_conditions(
        existing.get("conditions") or [],
        [
            ConditionValue(ConditionType.RUNNING, False, Reason.PENDING, "waiting for the run to start"),
            ConditionValue(ConditionType.FINISHED, False, Reason.IN_PROGRESS, ""),
        ],
        now_rfc3339(),
        generation,
        drop=[ConditionType.INVALID],
    )
    return {
        "phase": WorkflowPhase.PENDING.value,
        "progress": progress(0, total_steps),
        "message": None,
        "completionTime": None,
        "observedGeneration": generation,
        "conditions": conditions,
    }


@dataclass
class StepView:
    name: str
    phase: StepPhase
    pool: str | None = None
    visits: int = 0
    attempts: int = 0
    parts: int | None = None
    agent: str | None = None
    start_time: str | None = None
    finish_time: str | None = None
    message: str = ""
    commit: str | None = None
    approval: JSON | None = None
    usage: JSON | None = None  # what its tasks used (all visits): {tokensIn, tokensOut, cost}

    def to_status(self) -> JSON:
        return StepStatus.model_validate(self.__dict__ | {"message": truncate(self.message)}).to_k8s()


@dataclass
class WorkflowTracker:
    """The in-memory status of one Workflow while its run is active in this operator."""

    step_names: list[str]
    pools: dict[str, str] = field(default_factory=dict)  # step -> pool, as the spec names it
    generation: int | None = None
    phase: WorkflowPhase = WorkflowPhase.PENDING
    suspended: bool = False
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    steps: dict[str, StepView] = field(default_factory=dict)
    result: Any = None
    result_ref: JSON | None = None
    workspace: JSON | None = None  # spec.workspace: WorkspaceStatus fields (camelCase)
    retries: int = 0
    retry_token: str | None = None
    degraded: str | None = None  # why the queue or checkpoint store is unreachable
    degraded_by_probe: bool = False  # set by the queue probe (which also clears it)
    missing_pools: list[str] | None = None  # None: never checked; []: every pool exists
    usage: JSON | None = None  # all tasks' usage (status.usage)
    budget_hold: str | None = None  # spec.budget reached with onExceed Suspend: the message naming the step
    stopping: bool = False  # spec.shutdown Stop asked; the run ends once its running tasks have
    reason: str | None = None  # the finished run's reason when it is not its phase (BudgetExceeded)
    conditions: list[JSON] = field(default_factory=list)
    transitions: list[KubeEvent] = field(default_factory=list)
    version: int = 0  # bumped on every change; the writer compares it with what it wrote
    #: Called after every change (the status writer subscribes in `StatusWriter.track`).
    on_change: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_status(
        cls, spec: WorkflowSpec, status: Mapping[str, Any], generation: int | None
    ) -> WorkflowTracker:
        """Continue from the stored status (after an operator restart, or for a retry)."""
        tracker = cls(
            step_names=[s.name for s in spec.steps],
            pools={s.name: s.pool for s in spec.steps},
            generation=generation,
        )
        tracker.suspended = spec.suspend
        tracker.stopping = (
            spec.shutdown is not None and not WorkflowPhase(status.get("phase") or "Pending").finished
        )
        if phase := status.get("phase"):
            tracker.phase = WorkflowPhase(phase)
        tracker.message = status.get("message")
        tracker.start_time = status.get("startTime")
        tracker.completion_time = status.get("completionTime")
        tracker.retries = int(status.get("retries") or 0)
        tracker.retry_token = status.get("retryToken")
        tracker.conditions = [dict(c) for c in status.get("conditions") or []]
        if isinstance(status.get("workspace"), Mapping):
            tracker.workspace = dict(status["workspace"])
        if isinstance(status.get("usage"), Mapping):
            tracker.usage = dict(status["usage"])
        for raw in status.get("steps") or []:
            step = StepStatus.model_validate(raw)
            tracker.steps[step.name] = StepView(**step.model_dump())
        return tracker

    # -- events ------------------------------------------------------------------------------------------

    def apply(self, event: ProgressEvent) -> None:
        at = rfc3339(event.at)
        kind = event.kind
        if kind in (EventKind.WORKFLOW_STARTED, EventKind.WORKFLOW_RESUMED):
            self.phase = WorkflowPhase.RUNNING
            self.start_time = self.start_time or at
            self.completion_time = None
            self.message = "resumed from its checkpoint" if kind is EventKind.WORKFLOW_RESUMED else None
            self._take_usage((event.detail or {}).get("usage"))
        elif kind is EventKind.USAGE:
            detail = event.detail or {}
            self._step(event.step).usage = detail.get("step")
            self.usage = detail.get("total")
        elif kind is EventKind.BUDGET_EXCEEDED:
            self._take_usage((event.detail or {}).get("usage"))
            if event.status == "Suspend":
                self.budget_hold = event.message
            self._transition(EventType.WARNING, Reason.BUDGET_EXCEEDED, f"{event.message}; {event.status}")
        elif kind is EventKind.BUDGET_RAISED:
            self.budget_hold = None
            self._transition(EventType.NORMAL, "BudgetRaised", "spec.budget raised above the usage: resumed")
        elif kind is EventKind.STEP_STARTED:
            step = self._step(event.step)
            step.phase, step.visits, step.attempts = StepPhase.RUNNING, step.visits + 1, 0
            step.parts, step.start_time, step.finish_time, step.message = event.parts, at, None, ""
            self._transition(
                EventType.NORMAL, "StepStarted", f"step {event.step} started (visit {step.visits})"
            )
        elif kind is EventKind.TASK_DISPATCHED:
            step = self._step(event.step)
            if step.phase not in (StepPhase.RUNNING, StepPhase.RETRYING) or step.visits == 0:
                # Not seen starting: a resumed run re-attaching after the status was lost.
                step.visits = max(step.visits, 1)
                step.start_time = step.start_time or at
            step.phase = StepPhase.RUNNING
            step.attempts = max(step.attempts, (event.attempt or 0) + 1)
        elif kind is EventKind.ATTEMPT_FAILED:
            step = self._step(event.step)
            step.phase, step.message = StepPhase.RETRYING, event.message
            step.agent = event.agent or step.agent
            self._transition(
                EventType.WARNING,
                "StepAttemptFailed",
                f"step {event.step} attempt {(event.attempt or 0) + 1} failed: "
                f"{truncate(event.message, 200)}",
            )
        elif kind is EventKind.APPROVAL_WAITING:
            step = self._step(event.step)
            step.phase, step.message, step.approval = StepPhase.WAITING, event.message, None
            step.visits = max(step.visits, 1)
            step.start_time = step.start_time or at
            self._transition(
                EventType.NORMAL, "ApprovalWaiting", f"step {event.step} waits for approval: {event.message}"
            )
        elif kind is EventKind.STEP_FINISHED:
            step = self._step(event.step)
            step.phase = _STEP_PHASES.get(event.status, StepPhase.FAILED)
            decided = (event.detail or {}).get("approval")
            if isinstance(decided, Mapping):
                step.approval = {k: decided.get(k) for k in ("decision", "by", "at", "message")}
            step.attempts = max(step.attempts, event.attempt or 0)
            step.finish_time, step.message = at, event.message
            step.agent = event.agent or step.agent
            if event.commit:
                step.commit = event.commit
                self.workspace = {**(self.workspace or {}), "commit": event.commit}
            took = f" in {event.duration:.3g}s" if event.duration is not None else ""
            if step.phase is StepPhase.SUCCEEDED:
                self._transition(EventType.NORMAL, "StepSucceeded", f"step {event.step} succeeded{took}")
            else:
                self._transition(
                    EventType.WARNING,
                    f"Step{step.phase.value}",
                    f"step {event.step} {step.phase.value.lower()}{took}: {truncate(event.message, 200)}",
                )
        elif kind in (EventKind.WORKSPACE_RESOLVED, EventKind.WORKSPACE_PUBLISHED):
            self.workspace = {**(self.workspace or {}), **workspace_status(event.detail or {})}
            if kind is EventKind.WORKSPACE_RESOLVED:
                self.workspace["base"] = event.commit
                self._transition(
                    EventType.NORMAL, "WorkspaceResolved", f"ref resolved to {event.commit[:12]}"
                )
            else:
                self._transition(
                    EventType.NORMAL,
                    "WorkspacePublished",
                    f"{event.commit[:12]} pushed to {self.workspace.get('branch')}",
                )
        else:  # WORKFLOW_FINISHED: `finish()` applies the run's outcome, with its result
            return
        self._changed()

    def finish(self, outcome: WorkflowOutcome, result: Any, result_ref: JSON | None) -> None:
        """The run returned: its outcome is final (also for a run that had finished before a restart)."""
        self.result, self.result_ref = result, result_ref
        if outcome.workspace is not None:
            self.workspace = {**(self.workspace or {}), **workspace_status(outcome.workspace)}
        phase = _OUTCOME_PHASES.get(outcome.status, WorkflowPhase.FAILED)
        self._take_usage(outcome.usage)
        self.reason, self.budget_hold = outcome.reason, None
        self._finish(phase, outcome.error or "", now_rfc3339())

    def _take_usage(self, usage: Any) -> None:
        """{"total", "steps"} from the run (restored, crossed or final): overwrite, it is cumulative."""
        if not isinstance(usage, Mapping):
            return
        self.usage = usage.get("total") or self.usage
        for name, value in (usage.get("steps") or {}).items():
            self._step(name).usage = value

    def _finish(self, phase: WorkflowPhase, message: str, at: str) -> None:
        first = self.phase is not phase or self.completion_time is None
        self.degraded, self.degraded_by_probe = None, False  # an ended run no longer waits for anything
        self.phase, self.message = phase, message or None
        self.completion_time = self.completion_time if not first else at
        for step in self.steps.values():
            if step.phase in ACTIVE_STEPS and phase.finished:
                step.phase, step.finish_time = StepPhase.CANCELLED, at
        if first:
            kind = EventType.NORMAL if phase is WorkflowPhase.SUCCEEDED else EventType.WARNING
            self._transition(kind, f"Workflow{phase.value}", message or f"workflow {phase.value.lower()}")
        self._changed()

    def set_suspended(self, suspended: bool) -> None:
        if suspended != self.suspended:
            self.suspended = suspended
            self._transition(
                EventType.NORMAL, "Suspended" if suspended else "Resumed", "spec.suspend changed"
            )
            self._changed()

    def set_shutdown(self, mode: str) -> None:
        """spec.shutdown was set on this run (Stop, or Terminate): an Event says what happens now."""
        if self.phase.finished:
            return
        if mode == "Terminate":
            self._transition(EventType.WARNING, "Terminating", "spec.shutdown Terminate: cancelling the run")
        elif not self.stopping:
            self.stopping = True
            self._transition(
                EventType.NORMAL,
                Reason.STOPPING,
                "spec.shutdown Stop: nothing new is dispatched; the run ends once its running tasks finish",
            )
        self._changed()

    def set_missing_pools(self, missing: list[str]) -> None:
        """The pools the steps name that do not exist ([] once they all do); the run waits until then."""
        if missing == self.missing_pools:
            return
        if missing:
            self._transition(
                EventType.WARNING,
                "PoolNotFound",
                f"waiting for AgentPool(s) {', '.join(missing)}: create them (kubectl get agentpools)",
            )
        self.missing_pools = missing
        self._changed()

    def set_degraded(self, reason: str | None) -> None:
        if reason != self.degraded:
            self.degraded = reason
            self._changed()

    def refuse_retry(self, token: str | None, reason: str) -> None:
        """A retry was asked for but cannot run: the token is consumed and the message says why."""
        self.retry_token, self.message = token, f"retry refused: {reason}"
        self._changed()

    def begin_retry(self, token: str | None, step: str | None) -> None:
        """A retry of the failed run starts: back to Running, the failed step starts again."""
        self.retries += 1
        self.retry_token = token
        self.phase, self.message, self.completion_time = WorkflowPhase.RUNNING, None, None
        self.result = self.result_ref = self.reason = None
        if step is not None:  # the rewound step starts its next visit (no StepStarted event comes for it)
            view = self._step(step)
            view.phase, view.visits, view.attempts = StepPhase.RUNNING, view.visits + 1, 0
            view.start_time, view.finish_time, view.message = now_rfc3339(), None, ""
        self._transition(EventType.NORMAL, "Retrying", f"retry {self.retries}: from step {step or '(start)'}")
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _step(self, name: str) -> StepView:
        if name not in self.steps:
            self.steps[name] = StepView(name=name, phase=StepPhase.RUNNING, pool=self.pools.get(name))
        return self.steps[name]

    def _transition(self, type_: EventType, reason: str, message: str) -> None:
        self.transitions.append(KubeEvent(type_, reason, message))

    def take_transitions(self) -> list[KubeEvent]:
        taken, self.transitions = self.transitions, []
        return taken

    # -- rendering ---------------------------------------------------------------------------------------

    @property
    def effective_phase(self) -> WorkflowPhase:
        if (self.suspended or self.budget_hold) and not self.phase.finished:
            return WorkflowPhase.SUSPENDED
        return self.phase

    def render(self, now: str | None = None) -> JSON:
        """The whole status; absent optional fields are null so a merge patch removes stale values."""
        now = now or now_rfc3339()
        phase = self.effective_phase
        order = {name: i for i, name in enumerate(self.step_names)}
        steps = sorted(self.steps.values(), key=lambda s: order.get(s.name, len(order)))
        finished = sum(1 for s in steps if s.phase in FINISHED_STEPS)
        running = [s.name for s in steps if s.phase in ACTIVE_STEPS]
        self.conditions = merge_conditions(
            self.conditions, self._condition_values(phase), now, self.generation
        )
        return {
            "observedGeneration": self.generation,
            "phase": phase.value,
            "progress": progress(finished, len(self.step_names)),
            "currentStep": ",".join(running) if running and not phase.finished else None,
            "message": truncate(self.message) if self.message else None,
            "startTime": self.start_time,
            "completionTime": self.completion_time if phase.finished else None,
            "steps": [s.to_status() for s in steps],
            "result": self.result,
            "resultRef": self.result_ref,
            "workspace": self.workspace,
            "usage": self.usage,
            "retries": self.retries,
            "retryToken": self.retry_token,
            "conditions": self.conditions,
        }

    def _condition_values(self, phase: WorkflowPhase) -> list[ConditionValue]:
        running: ConditionValue
        if self.stopping and not phase.finished:
            running = ConditionValue(
                ConditionType.RUNNING, False, Reason.STOPPING, "spec.shutdown Stop: running tasks finish"
            )
        elif phase is WorkflowPhase.RUNNING:
            running = ConditionValue(ConditionType.RUNNING, True, Reason.RUNNING, "")
        elif phase is WorkflowPhase.SUSPENDED and self.budget_hold and not self.suspended:
            running = ConditionValue(ConditionType.RUNNING, False, Reason.BUDGET_EXCEEDED, self.budget_hold)
        elif phase is WorkflowPhase.SUSPENDED:
            running = ConditionValue(ConditionType.RUNNING, False, Reason.SUSPENDED, "spec.suspend is true")
        elif phase is WorkflowPhase.PENDING:
            running = ConditionValue(
                ConditionType.RUNNING, False, Reason.PENDING, "waiting for the run to start"
            )
        else:
            running = ConditionValue(ConditionType.RUNNING, False, Reason.FINISHED, "")
        if phase.finished:
            # A reason finer than the phase when the run gave one (BudgetExceeded, Stopped, Terminated).
            why = Reason(self.reason) if self.reason in _FINISH_REASONS else Reason(phase.value)
            finished = ConditionValue(ConditionType.FINISHED, True, why, self.message or "")
        else:
            finished = ConditionValue(ConditionType.FINISHED, False, Reason.IN_PROGRESS, "")
        if self.degraded:
            degraded = ConditionValue(ConditionType.DEGRADED, True, Reason.QUEUE_UNREACHABLE, self.degraded)
        else:
            degraded = ConditionValue(ConditionType.DEGRADED, False, Reason.AS_EXPECTED, "")
        values = [running, finished, degraded]
        if self.missing_pools:
            message = (
                f"AgentPool(s) {', '.join(self.missing_pools)} not found; the run starts when they exist"
            )
            values.append(ConditionValue(ConditionType.POOL_NOT_FOUND, True, Reason.POOL_NOT_FOUND, message))
        elif self.missing_pools is not None and any(
            c.get("type") == ConditionType.POOL_NOT_FOUND for c in self.conditions
        ):
            values.append(ConditionValue(ConditionType.POOL_NOT_FOUND, False, Reason.POOLS_FOUND, ""))
        return values


def workspace_status(info: Mapping[str, Any]) -> JSON:
    """The status fields of a workspace record (an event's detail or the outcome's), validated and bounded."""
    fields = {
        k: info[k] for k in ("url", "ref", "base", "commit", "branch", "diffstat", "files") if k in info
    }
    if isinstance(fields.get("files"), list):
        fields["files"] = fields["files"][:50]
    # exclude_unset: a later record without `files` must not wipe the ones an earlier one reported
    return WorkspaceStatus.model_validate(fields).model_dump(by_alias=True, exclude_unset=True, mode="json")
