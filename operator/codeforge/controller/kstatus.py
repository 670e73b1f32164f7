"""Kubernetes status helpers shared by the AgentPool and Workflow controllers: object references, condition
merging, Event records, RFC 3339 times and message bounds.

Conditions follow the Kubernetes convention (metav1.Condition): `lastTransitionTime` moves only when a
condition's status flips, messages are bounded, `observedGeneration` says which spec they describe.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from codeforge.api.workflow_status import truncate

JSON = dict[str, Any]
#: metav1.Condition's limit on a message.
CONDITION_MESSAGE_LIMIT: Final = 32768
#: What the operator puts in one Kubernetes Event's message (the API server allows 1 KiB).
EVENT_MESSAGE_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The identity of one namespaced custom object (an AgentPool or a Workflow)."""

    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True, slots=True)
class KubeEvent:
    """One Kubernetes Event to post on an object (a scale decision, a health change, a step transition)."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ConditionValue:
    """One computed condition, before `merge_conditions` stamps it with times and the generation."""

    type: enum.StrEnum
    status: bool
    reason: enum.StrEnum
    message: str


def rfc3339(unix: float) -> str:
    """A Kubernetes `Time` (seconds precision) for a Unix timestamp."""
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes `MicroTime` (what Lease times are)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def merge_conditions(
    existing: Sequence[Mapping[str, Any]],
    values: Iterable[ConditionValue],
    now: str,
    generation: int | None,
    *,
    drop: Iterable[enum.StrEnum] = (),
    keep_others: bool = True,
) -> list[JSON]:
    """Conditions after an update; `lastTransitionTime` moves only when a status flips. Conditions of other
    types are kept (in their order) unless `keep_others` is false or their type is in `drop`."""
    previous = {c.get("type"): dict(c) for c in existing}
    by_type = dict(previous) if keep_others else {}
    for gone in drop:
        by_type.pop(gone.value, None)
    for value in values:
        text = "True" if value.status else "False"
        before = previous.get(value.type.value)
        since = before["lastTransitionTime"] if before and before.get("status") == text else now
        condition: JSON = {
            "type": value.type.value,
            "status": text,
            "reason": value.reason.value,
            "message": truncate(value.message, CONDITION_MESSAGE_LIMIT),
            "lastTransitionTime": since,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        by_type[value.type.value] = condition
    return [c for c in by_type.values() if c.get("type")]


def condition_true(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> bool:
    """Whether the condition of this type is present with status True."""
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conditions or [])


def condition_message(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> str:
    for condition in conditions or []:
        if condition.get("type") == ctype:
            return str(condition.get("message", ""))
    return ""
