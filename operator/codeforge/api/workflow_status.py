"""The Workflow custom resource's `status`: what `kubectl get workflows` and `kubectl describe` show.

The operator writes it (batched, see `controller.workflow.status_writer`); it stays compact because etcd
holds only a summary: one entry per step (its latest visit), a progress string for the printer column, and
the result inline only while it is small. A larger result stays in Redis and the status names its key.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, WithJsonSchema

from codeforge.api.agentpool import CamelModel, Condition
from codeforge.api.limits import clip_text

#: Results whose JSON is larger than this stay in Redis (`status.resultRef`); etcd objects are capped at
#: 1.5 MiB and every watcher of Workflows receives the whole object on each change.
RESULT_INLINE_LIMIT: Final = 4096
#: Messages are cut to this many characters (a traceback must not bloat the object).
MESSAGE_LIMIT: Final = 1024

FreeJSON = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]


class WorkflowPhase(enum.StrEnum):
    PENDING = "Pending"  # accepted, the run has not started yet
    RUNNING = "Running"
    SUSPENDED = "Suspended"  # spec.suspend: no new task is dispatched; running ones finish
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # a step failed without a route for its failure, or the spec is invalid
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        return self in (WorkflowPhase.SUCCEEDED, WorkflowPhase.FAILED, WorkflowPhase.CANCELLED)


class StepPhase(enum.StrEnum):
    RUNNING = "Running"  # its task(s) are queued or being worked on
    RETRYING = "Retrying"  # an attempt failed; the step's retry policy runs another one
    WAITING = "Waiting"  # an approval step waits for `codeforge approve|reject` (or its annotation)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class ApprovalStatus(CamelModel):
    """An approval step's decision: what was decided, by whom (as the deciding client said), and when."""

    model_config = ConfigDict(extra="ignore")

    decision: str = Field(description="approved, rejected or timedOut.", max_length=16)
    by: str = Field(default="", max_length=253, description="The Kubernetes user who decided.")
    at: str | None = Field(default=None, max_length=40, description="RFC 3339.")
    message: str = Field(default="", max_length=MESSAGE_LIMIT)


class UsageStatus(CamelModel):
    """Tokens and cost as the tasks' handlers reported them (README, "Rate limits and budgets")."""

    model_config = ConfigDict(extra="ignore")

    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    cost: float = Field(default=0.0, ge=0)


class StepStatus(CamelModel):
    """The latest visit of one step (a step revisited in a loop shows its last visit and the count)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    pool: str | None = Field(default=None, description="The AgentPool that runs the step.")
    phase: StepPhase
    visits: int = Field(default=1, ge=0, description="How many times the step ran (loops revisit steps).")
    attempts: int = Field(default=0, ge=0, description="Attempts of the latest visit (retries included).")
    parts: int | None = Field(default=None, ge=0, description="Fan-out width (parallel / forEach).")
    agent: str | None = Field(default=None, description="The agent that ran the latest attempt.")
    commit: str | None = Field(
        default=None, max_length=40, description="spec.workspace: the latest visit's output commit."
    )
    start_time: str | None = Field(default=None, description="RFC 3339.")
    finish_time: str | None = Field(default=None, description="RFC 3339.")
    message: str = Field(default="", max_length=MESSAGE_LIMIT)
    approval: ApprovalStatus | None = Field(default=None, description="Approval steps: the decision.")
    usage: UsageStatus | None = Field(default=None, description="What the step's tasks used, all visits.")


class Diffstat(CamelModel):
    model_config = ConfigDict(extra="ignore")

    files: int = Field(default=0, ge=0)
    insertions: int = Field(default=0, ge=0)
    deletions: int = Field(default=0, ge=0)


class WorkspaceStatus(CamelModel):
    """spec.workspace: where the run started, where it is, and (once succeeded) the branch it produced."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(default=None, max_length=2048, description="The repository (no credentials).")
    ref: str | None = Field(default=None, max_length=255, description="The ref the run started from.")
    base: str | None = Field(default=None, max_length=40, description="The commit `ref` resolved to.")
    commit: str | None = Field(
        default=None, max_length=40, description="The latest step's output commit; the final one when done."
    )
    branch: str | None = Field(
        default=None, max_length=255, description="The branch the final commit was pushed to."
    )
    diffstat: Diffstat | None = Field(default=None, description="The final commit against the base.")
    files: list[str] = Field(default_factory=list, max_length=50, description="Changed files (the first 50).")


class ResultRef(CamelModel):
    """Where a result too large for the status is kept."""

    model_config = ConfigDict(extra="ignore")

    redis_key: str = Field(description="A Redis string holding the result as JSON.")
    size_bytes: int = Field(ge=0)


class WorkflowStatus(CamelModel):
    """Observed state of a Workflow, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    phase: WorkflowPhase | None = None
    progress: str | None = Field(default=None, description="Finished steps / all steps, like 3/6.")
    current_step: str | None = Field(default=None, description="The steps running now, comma-separated.")
    message: str | None = Field(default=None, max_length=MESSAGE_LIMIT)
    start_time: str | None = Field(default=None, description="RFC 3339.")
    completion_time: str | None = Field(default=None, description="RFC 3339.")
    steps: list[StepStatus] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    result: FreeJSON = Field(
        default=None,
        description=f"Step results by step name, when their JSON fits {RESULT_INLINE_LIMIT} bytes.",
    )
    result_ref: ResultRef | None = Field(default=None, description="Where a larger result is kept.")
    workspace: WorkspaceStatus | None = Field(
        default=None,
        description="spec.workspace: base, current commit, and the branch a succeeded run pushed.",
    )
    usage: UsageStatus | None = Field(
        default=None, description="What all tasks used; spec.budget is checked against it."
    )
    retries: int = Field(default=0, ge=0, description="Retries requested through the retry annotation.")
    retry_token: str | None = Field(default=None, description="The last retry annotation acted upon.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def progress(finished: int, total: int) -> str:
    return f"{finished}/{total}"


def truncate(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return clip_text(message, limit)


def encoded_size(value: Any) -> int:
    """Size of the JSON the status would carry."""
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
