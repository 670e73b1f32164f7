"""Approval decisions: how a human (or a GitOps tool) approves or rejects a Workflow's `kind: approval` step.

A decision is an annotation on the Workflow, one per step, so it lives in etcd (it survives operator restarts
and fail-overs) and needs no extra RBAC verb beyond `patch workflows`:

    approval.codeforge.ai/<step>: '{"decision": "approve", "visit": 1, "by": "alice", "message": "ship it",
                                    "at": "2026-12-02T10:00:00Z"}'

`codeforge approve|reject WF STEP` writes that JSON, with `by` taken from the API server's answer to a
SelfSubjectReview (who the caller's kubeconfig authenticates as) and `visit` from the step's status (a step
revisited in a loop needs a decision per visit). A GitOps tool may write the short form `approve` or
`reject` (or JSON without `by`/`visit`): it then applies to any visit and `by` is "annotation".

Trust: the operator cannot learn from an annotation who wrote it (managedFields name a field manager, not a
user), so `by` is recorded as given. Who may decide is who may patch the Workflow (RBAC); `by` is the
audit note of an honest client.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from codeforge.api.limits import clip

ANNOTATION_PREFIX: Final = "approval.codeforge.ai/"
#: A decision's annotation value, and its message and approver: bounded, as any user input.
MAX_DECISION_BYTES: Final = 4096
MAX_DECISION_MESSAGE: Final = 1024
MAX_APPROVER: Final = 253
#: `by` of a decision that names nobody (the short form a GitOps tool writes).
ANONYMOUS: Final = "annotation"
_WORDS: Final = {"approve": True, "approved": True, "reject": False, "rejected": False}


class DecisionError(ValueError):
    """An approval annotation that cannot be read; the message names the annotation and the fix."""


@dataclass(frozen=True, slots=True)
class Decision:
    approved: bool
    by: str = ANONYMOUS
    message: str = ""
    at: str | None = None  # RFC 3339; None: the operator records when it saw the decision
    visit: int | None = None  # None: whichever visit of the step waits

    def applies_to(self, visit: int) -> bool:
        return self.visit is None or self.visit == visit

    def result(self, seen_at: str) -> dict[str, Any]:
        """The step's result, as CEL routing sees it (`result.approved`, `result.by`, ...)."""
        return {
            "approved": self.approved,
            "decision": "approved" if self.approved else "rejected",
            "by": self.by,
            "at": self.at or seen_at,
            "message": self.message,
        }

    def encode(self) -> str:
        data: dict[str, Any] = {"decision": "approve" if self.approved else "reject", "by": self.by}
        if self.visit is not None:
            data["visit"] = self.visit
        if self.message:
            data["message"] = self.message
        if self.at:
            data["at"] = self.at
        return json.dumps(data, separators=(",", ":"))


def annotation_key(step: str) -> str:
    return ANNOTATION_PREFIX + step


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_decision(key: str, value: str) -> Decision:
    """One annotation's decision; DecisionError naming the annotation when it is malformed."""
    where = f"annotation {key}"
    if len(value.encode()) > MAX_DECISION_BYTES:
        raise DecisionError(f"{where}: longer than {MAX_DECISION_BYTES} bytes; shorten the message")
    text = value.strip()
    if text.lower() in _WORDS:
        return Decision(approved=_WORDS[text.lower()])
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise DecisionError(
            f"{where}: {clip(value)} is neither `approve`, `reject` nor a JSON object "
            '({"decision": "approve", "message": "..."})'
        )
    word = data.get("decision")
    if not isinstance(word, str) or word.lower() not in _WORDS:
        raise DecisionError(f"{where}: decision {clip(word)} must be `approve` or `reject`")
    by, message = data.get("by", ANONYMOUS), data.get("message", "")
    at, visit = data.get("at"), data.get("visit")
    if not isinstance(by, str) or not 0 < len(by) <= MAX_APPROVER:
        raise DecisionError(f"{where}: `by` must be a name of 1-{MAX_APPROVER} characters")
    if not isinstance(message, str) or len(message) > MAX_DECISION_MESSAGE:
        raise DecisionError(f"{where}: `message` must be text of at most {MAX_DECISION_MESSAGE} characters")
    if at is not None and (not isinstance(at, str) or not _is_rfc3339(at)):
        raise DecisionError(f"{where}: `at` {clip(at)} must be an RFC 3339 time like 2026-01-02T03:04:05Z")
    whole = isinstance(visit, int) and not isinstance(visit, bool)
    if visit is not None and (not whole or not 1 <= visit <= 10**6):
        raise DecisionError(f"{where}: `visit` {clip(visit)} must be a whole number >= 1")
    return Decision(_WORDS[word.lower()], by, message, at, visit)


def _is_rfc3339(text: str) -> bool:
    if len(text) > 40:
        return False
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def decisions_from_annotations(annotations: Mapping[str, str]) -> tuple[dict[str, Decision], list[str]]:
    """Every approval annotation's decision by step name, and the problems of the unreadable ones."""
    decisions: dict[str, Decision] = {}
    problems: list[str] = []
    for key, value in annotations.items():
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        try:
            decisions[key.removeprefix(ANNOTATION_PREFIX)] = parse_decision(key, value)
        except DecisionError as exc:
            problems.append(str(exc))
    return decisions, problems
