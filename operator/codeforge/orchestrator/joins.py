"""Fan-in: merge the outcomes of a step's parts into one result under the step's join policy."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from codeforge.api.outcome import Outcome
from codeforge.api.workflow import JoinPolicy, Step


@dataclass(frozen=True, slots=True)
class Joined:
    status: str  # succeeded | failed
    result: Any
    error: str | None


def join(step: Step, parts: dict[str, dict[str, Any]]) -> Joined:
    ordered = [parts[k] for k in sorted(parts, key=int)]
    if not step.fans_out:
        only = (
            ordered[0]
            if ordered
            else {"status": Outcome.FAILED.value, "error": "the step produced no result"}
        )
        return Joined(only["status"], only.get("result"), only.get("error"))
    if step.join is JoinPolicy.ALL:
        return _join_all(ordered)
    if step.join is JoinPolicy.FIRST_SUCCESS:
        return _join_first(ordered)
    return _join_majority(step, ordered)


def _errors(parts: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"part {p['index']}: {p.get('error') or p['status']}"
        for p in parts
        if p["status"] != Outcome.SUCCEEDED
    )


def _join_all(parts: list[dict[str, Any]]) -> Joined:
    if all(p["status"] == Outcome.SUCCEEDED for p in parts):
        return Joined(Outcome.SUCCEEDED.value, [p.get("result") for p in parts], None)
    return Joined(Outcome.FAILED.value, None, _errors(parts))


def _join_first(parts: list[dict[str, Any]]) -> Joined:
    winners = sorted(
        (p for p in parts if p["status"] == Outcome.SUCCEEDED),
        key=lambda p: (p.get("finished", 0), p["index"]),
    )
    if winners:
        return Joined(Outcome.SUCCEEDED.value, winners[0].get("result"), None)
    return Joined(Outcome.FAILED.value, None, f"no part succeeded: {_errors(parts)}")


def vote_of(result: Any, field: str) -> str | None:
    if isinstance(result, dict):
        value = result.get(field)
    elif isinstance(result, str | int | bool):
        value = result
    else:
        value = None
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)  # true, not Python's True


def _join_majority(step: Step, parts: list[dict[str, Any]]) -> Joined:
    votes = Counter(
        vote
        for p in parts
        if p["status"] == Outcome.SUCCEEDED
        and (vote := vote_of(p.get("result"), step.vote_field)) is not None
    )
    tally = dict(votes.most_common())
    if votes:
        choice, count = votes.most_common(1)[0]
        if count * 2 > len(parts):  # a strict majority of all parts, failed ones included
            results = [p.get("result") for p in parts]
            return Joined(
                Outcome.SUCCEEDED.value, {step.vote_field: choice, "votes": tally, "results": results}, None
            )
    failures = _errors(parts)
    detail = f"; failures: {failures}" if failures else ""
    return Joined(
        Outcome.FAILED.value,
        None,
        f"no majority among {len(parts)} parts on {step.vote_field!r}: votes {tally}{detail}",
    )
