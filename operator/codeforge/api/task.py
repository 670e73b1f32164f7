"""The Task model: one unit of work in an AgentPool's queue, and what a finished task leaves behind."""

from __future__ import annotations

import enum
import json
import re
import time
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Payloads are JSON; anything larger than this belongs in object storage, referenced from the payload.
from codeforge.api.limits import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from codeforge.api.limits import clip

#: Pool names become Redis hash tags (`{pool}`), so braces are excluded; `namespace/name` is allowed.
POOL_NAME_RE: Final = re.compile(
    r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$"
)
TASK_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:/@=+-]{1,256}$")
#: Retries and agent deaths (DESIGN.md section 3): a lost lease spends its own budget, with a backoff that
#: doubles per loss up to this cap (the Redis scripts hold the same cap in lib.lua).
DEFAULT_MAX_LOST_LEASES: Final = 10
LOST_LEASE_BACKOFF_CAP_SECONDS: Final = 60.0

JSONValue = Any


class Priority(enum.IntEnum):
    """Lower value runs first; FIFO within one priority."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Accept a Priority, its name in any case, or its number; reject anything else clearly."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
            if value.strip().isdigit():
                value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(f"{p.name} ({p.value})" for p in cls)
        raise ValueError(f"unknown priority {clip(value)}: use one of {names}")


class TaskState(enum.StrEnum):
    QUEUED = "queued"  # waiting in the pool's queue (or delayed for a retry backoff)
    RUNNING = "running"  # claimed under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # permanent failure reported by the handler
    DEAD = "dead"  # out of attempts: kept in the dead-letter queue with its reason
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL: Final = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED})


def validate_pool_name(pool: str) -> str:
    if not isinstance(pool, str) or not POOL_NAME_RE.match(pool):
        raise ValueError(
            f"invalid pool name {clip(pool)}: use a lowercase DNS-1123 name such as 'research', "
            "optionally prefixed by a namespace ('team-a/research')"
        )
    return pool


class Task(BaseModel):
    """What a producer enqueues. Immutable once queued; the queue tracks attempts and state beside it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: str = Field(description="Caller-chosen id; enqueue is idempotent on it within a pool.")
    pool: str = Field(description="The AgentPool whose queue holds the task.")
    workflow: str = Field(
        default="", description="Owning Workflow (uid or namespace/name), empty for ad-hoc tasks."
    )
    step: str = Field(default="", description="Workflow step that produced the task.")
    priority: Priority = Priority.MEDIUM
    payload: JSONValue = Field(default=None, description="Free JSON handed to the agent's handler.")
    attempts: int = Field(
        default=0,
        ge=0,
        description="Deliveries so far, claims given back unstarted not counted (set by the queue).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="The handler's budget: runs that may end in a retryable failure. The max_attempts-th "
        "such failure dead-letters the task; lost leases and drains do not count.",
    )
    max_lost_leases: int = Field(
        default=DEFAULT_MAX_LOST_LEASES,
        ge=1,
        le=1000,
        description="The lost-lease budget: times the task's agent may vanish (no heartbeat within the "
        "lease: killed, evicted, preempted) or stop mid-task on a drain, before the task is dead-lettered.",
    )
    lost_lease_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="Wait before redelivering a task whose lease was lost; it doubles with each loss, up to "
        f"{LOST_LEASE_BACKOFF_CAP_SECONDS:g} s, so a task that kills its agent does not crash-loop the pool.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="Lease length when the claiming consumer names none (agents name their pool's "
        "spec.queue.leaseSeconds).",
    )
    created_at: float = Field(default_factory=time.time, description="Unix time of creation.")
    deadline: float | None = Field(default=None, description="Unix time after which the task's work is moot.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not TASK_ID_RE.match(value):
            raise ValueError(
                f"task id must be 1-256 characters of letters, digits and ._:/@=+- (got {value[:80]!r})"
            )
        return value

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: str) -> str:
        return validate_pool_name(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority:
        return Priority.parse(value)

    @model_validator(mode="after")
    def _check_payload(self) -> Task:
        try:
            encoded = json.dumps(self.payload, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"payload must be JSON-serialisable (dicts, lists, strings, numbers, bools, null): {exc}"
            ) from None
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload is {len(encoded)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit: "
                "store large inputs elsewhere (object storage, a volume) and pass a reference"
            )
        return self


class TaskOutcome(BaseModel):
    """A task's final (or current) record, as `wait_result` and `get` return it."""

    model_config = ConfigDict(frozen=True)

    id: str
    pool: str
    state: TaskState
    result: JSONValue = None
    error: str | None = None
    attempts: int = 0
    consumer: str | None = Field(
        default=None, description="The agent holding the task, or that finished it last."
    )


class QueueStats(BaseModel):
    """Per-pool figures that drive autoscaling and metrics; each is an O(1) / O(log n) read."""

    model_config = ConfigDict(frozen=True)

    pool: str
    queued: int = Field(description="Ready to claim now.")
    delayed: int = Field(description="Waiting for a retry backoff to pass.")
    in_flight: int = Field(description="Claimed, under a lease.")
    dead: int = Field(description="In the dead-letter queue.")
    oldest_age_seconds: float = Field(description="Age of the oldest ready task, 0 when none waits.")
