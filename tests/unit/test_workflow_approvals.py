"""Approval steps without a cluster: the spec rules, the decision annotation's format, and `codeforge run`
deciding them by flag, routing on `result.approved` through CEL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codeforge.api.approval import Decision, DecisionError, decisions_from_annotations, parse_decision
from codeforge.api.workflow import WorkflowSpecError, parse_workflow_spec
from codeforge.cli import _register, app
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowHandle, WorkflowRunner
from codeforge.queue import open_queue

runner = CliRunner()
_register()

GATED = """
apiVersion: codeforge.ai/v1alpha1
kind: Workflow
metadata: {name: gated}
spec:
  input: {change: 1}
  steps:
    - {name: build, pool: impl}
    - {name: gate, kind: approval, message: "ship it?"%(timeout)s}
    - {name: ship, pool: impl}
    - {name: rollback, pool: impl}
  edges:
    - {from: build, to: gate}
    - {from: gate, to: ship, when: "result.approved"}
    - {from: gate, to: rollback, when: "!result.approved"}
---
apiVersion: codeforge.ai/v1alpha1
kind: AgentPool
metadata: {name: impl}
spec: {handler: {kind: echo}}
"""


def manifest(tmp_path: Path, timeout: str = "") -> str:
    path = tmp_path / "gated.yaml"
    path.write_text(GATED % {"timeout": timeout})
    return str(path)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["run", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_approve_routes_to_ship_and_records_who(tmp_path: Path) -> None:
    code, out, err = run(manifest(tmp_path), "-o", "json", "--approve", "gate", "--message", "lgtm")
    assert code == 0, err
    outcome = json.loads(out)
    assert [h["step"] for h in outcome["history"]] == ["build", "gate", "ship"]
    gate = outcome["results"]["gate"]
    assert gate["approved"] is True
    assert gate["decision"] == "approved"
    assert gate["message"] == "lgtm"
    assert gate["by"]
    assert gate["at"].endswith("Z")


def test_reject_routes_to_rollback(tmp_path: Path) -> None:
    code, out, err = run(manifest(tmp_path), "-o", "json", "--reject", "gate", "--message", "not today")
    assert code == 0, err
    outcome = json.loads(out)
    assert [h["step"] for h in outcome["history"]] == ["build", "gate", "rollback"]
    assert outcome["history"][1]["error"].endswith("not today")
    assert outcome["results"]["gate"]["approved"] is False


def test_a_rejection_without_a_route_fails_the_workflow(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    text = GATED % {"timeout": ""}
    path.write_text(
        text.replace('to: ship, when: "result.approved"', "to: ship").replace('"!result.approved"', '"false"')
    )
    code, out, _ = run(str(path), "-o", "json", "--reject", "gate")
    assert code == 1
    outcome = json.loads(out)
    assert [h["step"] for h in outcome["history"]] == ["build", "gate"]
    assert outcome["error"].startswith("step 'gate' failed: step 'gate' rejected by")


def test_an_undecided_approval_without_a_terminal_is_refused_up_front(tmp_path: Path) -> None:
    code, out, err = run(manifest(tmp_path), "-o", "json")
    assert code == 2
    assert out == ""
    assert "step 'gate' is an approval step and stdin is not a terminal" in err
    assert "--approve gate" in err
    code, _, err = run(manifest(tmp_path), "--approve", "gat")
    assert code == 2
    assert "--approve 'gat': no approval step has that name (approval steps: gate)" in err


def test_auto_approve(tmp_path: Path) -> None:
    code, out, err = run(manifest(tmp_path), "-o", "json", "--auto-approve")
    assert code == 0, err
    assert json.loads(out)["results"]["gate"]["message"] == "--auto-approve"


async def test_an_approval_times_out_and_routes_as_not_approved() -> None:
    spec = parse_workflow_spec(
        {
            "steps": [
                {"name": "gate", "kind": "approval", "timeoutSeconds": 0.3},
                {"name": "later", "pool": "impl"},
            ],
            "edges": [{"from": "gate", "to": "later", "when": "result.decision == 'timedOut'"}],
        }
    )
    queue = await open_queue("memory://")
    async with InProcessAgents(queue, [PoolSpec("impl")]):
        outcome = await asyncio.wait_for(WorkflowRunner(queue).run("t", spec), 10)
    await queue.close()
    assert [h["step"] for h in outcome.history] == ["gate", "later"]
    assert outcome.history[0]["error"] == "no decision on step 'gate' within 0.3s (timeoutSeconds)"


async def test_a_decision_for_another_visit_does_not_count() -> None:
    spec = parse_workflow_spec({"steps": [{"name": "gate", "kind": "approval", "timeoutSeconds": 0.5}]})
    control = WorkflowHandle()
    control.approvals.replace({"gate": Decision(True, "bob", visit=2)})
    queue = await open_queue("memory://")
    outcome = await asyncio.wait_for(WorkflowRunner(queue).run("v", spec, control=control), 10)
    await queue.close()
    assert outcome.status == "failed"
    assert "within 0.5s" in (outcome.error or "")


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"name": "a", "kind": "approval", "pool": "impl"}, "an approval step waits for a person"),
        ({"name": "a", "kind": "approval", "parallel": 2}, "remove parallel"),
        ({"name": "a"}, "a task step needs the AgentPool that runs it"),
        ({"name": "a", "pool": "p", "message": "hi"}, "message is for approval steps"),
        ({"name": "a", "kind": "approval", "message": "m" * 1025}, "spec.steps[0].message"),
        ({"name": "a", "kind": "vote"}, "spec.steps[0].kind"),
    ],
)
def test_approval_step_rules(step: dict[str, object], expected: str) -> None:
    with pytest.raises(WorkflowSpecError) as info:
        parse_workflow_spec({"steps": [step]})
    assert expected in str(info.value)


def test_decision_annotations() -> None:
    key = "approval.codeforge.ai/gate"
    assert parse_decision(key, "approve") == Decision(True)
    assert parse_decision(key, " Reject ") == Decision(False)
    full = Decision(True, "alice", "ok", "2026-01-02T03:04:05Z", 3)
    assert parse_decision(key, full.encode()) == full
    for bad, why in [
        ("maybe", "neither `approve`, `reject` nor a JSON object"),
        ('{"decision": "yes"}', "must be `approve` or `reject`"),
        ('{"decision": "approve", "visit": 0}', "`visit` 0 must be a whole number"),
        ('{"decision": "approve", "at": "yesterday"}', "must be an RFC 3339 time"),
        ('{"decision": "approve", "by": ""}', "`by` must be a name"),
        ("x" * 10_000, "longer than 4096 bytes"),
    ]:
        with pytest.raises(DecisionError) as info:
            parse_decision(key, bad)
        assert why in str(info.value)
        assert key in str(info.value)
        assert len(str(info.value)) < 400
    decisions, problems = decisions_from_annotations({key: "approve", "other/x": "y", key + "2": "no"})
    assert decisions == {"gate": Decision(True)}
    assert len(problems) == 1
