"""Usage and spec.budget in the Workflow status: the tracker folds the run's events into it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolSpec
from codeforge.api.workflow import WorkflowSpecError, parse_workflow_spec
from codeforge.api.workflow_status import WorkflowStatus
from codeforge.controller.workflow.tracker import WorkflowTracker
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowOutcome

SPEC = parse_workflow_spec(
    {
        "steps": [{"name": n, "pool": "work"} for n in ("plan", "write")],
        "edges": [{"from": "plan", "to": "write"}],
        "budget": {"maxTokens": 150, "onExceed": "Suspend"},
    }
)
PLAN = {"tokensIn": 40, "tokensOut": 60, "cost": 0.25}
BOTH = {"tokensIn": 80, "tokensOut": 120, "cost": 0.5}


def event(kind: EventKind, step: str = "", **fields: Any) -> ProgressEvent:
    return ProgressEvent(kind, "wf", step, **fields)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_usage_per_step_and_in_total_and_a_budget_suspension() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.apply(event(EventKind.STEP_STARTED, "plan"))
    tracker.apply(event(EventKind.USAGE, "plan", detail={"step": PLAN, "total": PLAN}))
    tracker.apply(event(EventKind.STEP_STARTED, "write"))
    tracker.apply(event(EventKind.USAGE, "write", detail={"step": PLAN, "total": BOTH}))
    message = "budget exceeded at step 'write': 200 of maxTokens 150 (spec.budget)"
    tracker.apply(
        event(
            EventKind.BUDGET_EXCEEDED,
            "write",
            status="Suspend",
            message=message,
            detail={"usage": {"total": BOTH, "steps": {"plan": PLAN, "write": PLAN}}},
        )
    )
    status = tracker.render()
    WorkflowStatus.model_validate(status)
    assert status["usage"] == BOTH
    assert {s["name"]: s["usage"] for s in status["steps"]} == {"plan": PLAN, "write": PLAN}
    assert status["phase"] == "Suspended"
    assert conditions(status)["Running"] == ("False", "BudgetExceeded", message)
    assert [t.reason for t in tracker.take_transitions()][-1] == "BudgetExceeded"
    # A restarted operator continues from the stored status.
    again = WorkflowTracker.from_status(SPEC, status, 1)
    assert again.render()["usage"] == BOTH
    tracker.apply(event(EventKind.BUDGET_RAISED))
    assert tracker.render()["phase"] == "Running"


def test_a_run_failed_by_its_budget_names_the_reason_and_the_step() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    message = "budget exceeded at step 'write': 200 of maxTokens 150 (spec.budget)"
    outcome = WorkflowOutcome(
        "wf",
        "failed",
        {},
        message,
        [],
        1.0,
        reason="BudgetExceeded",
        usage={"total": BOTH, "steps": {"plan": PLAN, "write": PLAN}},
    )
    tracker.finish(outcome, None, None)
    status = tracker.render()
    assert status["phase"] == "Failed"
    assert conditions(status)["Finished"] == ("True", "BudgetExceeded", message)
    assert status["usage"] == BOTH
    tracker.begin_retry("t1", "write")  # a retry is not failed by the budget (until it is reached again)
    tracker.finish(dataclasses.replace(outcome, reason=None, error="step 'write' failed: x"), None, None)
    assert conditions(tracker.render())["Finished"][1] == "Failed"


def test_budget_and_rate_limit_specs_refuse_empty_and_bad_values() -> None:
    steps = [{"name": "a", "pool": "p"}]
    with pytest.raises(WorkflowSpecError, match=r"^spec\.budget: set maxTokens or maxCost"):
        parse_workflow_spec({"steps": steps, "budget": {"onExceed": "Fail"}})
    with pytest.raises(WorkflowSpecError, match=r"spec\.budget\.onExceed"):
        parse_workflow_spec({"steps": steps, "budget": {"maxCost": 1, "onExceed": "Nap"}})
    pool = {"role": "writer", "handler": {"kind": "openai"}}
    # A key alone is valid: a fleet-wide key of the platform's; the operator refuses it (InvalidSpec) when
    # the platform declares no such key (tests/unit/test_rate_limit_governance.py).
    assert AgentPoolSpec.model_validate({**pool, "rateLimit": {"key": "openai/gpt-4.1"}}).rate_limit
    with pytest.raises(ValidationError, match="key"):
        AgentPoolSpec.model_validate({**pool, "rateLimit": {"key": "{evil}", "requestsPerMinute": 1}})
    ok = AgentPoolSpec.model_validate(
        {**pool, "rateLimit": {"key": "openai/gpt-4.1", "tokensPerMinute": 30000}}
    )
    assert ok.rate_limit is not None
    assert ok.rate_limit.burst_seconds == 1.0
