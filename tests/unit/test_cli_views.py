"""What the cluster CLI prints, from objects shaped by the operator's own status models, and which agent log
lines `codeforge logs` keeps, from lines written by the agent's own formatters."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from codeforge.api.workflow_status import (
    ApprovalStatus,
    StepPhase,
    StepStatus,
    WorkflowPhase,
    WorkflowStatus,
)
from codeforge.cli import render, workflow_view
from codeforge.cli.logs import matching, readable
from codeforge_agent.log_setup import JsonFormatter, TextFormatter, get_logger

UID = "0b4c2f5e-1111-4a6b-9a57-3a4f0e0c1d2e"


def workflow_obj(status: WorkflowStatus, **spec: Any) -> dict[str, Any]:
    steps = [{"name": "research", "pool": "research"}, {"name": "build", "pool": "impl"}]
    edges = [{"from": "research", "to": "build", "when": 'result.kind == "ok"'}]
    return {
        "metadata": {
            "name": "feature",
            "namespace": "team-a",
            "uid": UID,
            "creationTimestamp": "2026-12-02T10:00:00Z",
        },
        "spec": {"steps": steps, "edges": edges, **spec},
        "status": status.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


NOW = render.parse_time("2026-12-02T10:05:00Z")


def test_get_shows_every_step_of_the_graph_with_what_the_status_knows() -> None:
    status = WorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        progress="1/2",
        start_time="2026-12-02T10:00:01Z",
        steps=[
            StepStatus(
                name="research", pool="research", phase=StepPhase.SUCCEEDED, attempts=2,
                agent="research-7d9-x",
                start_time="2026-12-02T10:00:02Z", finish_time="2026-12-02T10:01:14Z", commit="a" * 40,
                message="",
            ),
        ],
        result={"research": {"kind": "ok", "notes": "three options"}},
    )  # fmt: skip
    text = workflow_view.describe(workflow_obj(status), now=NOW)
    assert "Phase:       Running" in text
    assert "Duration:    4m59s" in text
    table = text[text.index("STEP") :].splitlines()
    assert table[0].split() == workflow_view.STEP_HEADERS
    research, build = table[1], table[2]
    assert research.split()[:7] == [
        "✔",
        "research",
        "research",
        "Succeeded",
        "2",
        "research-7d9-x",
        "10:00:02",
    ]
    assert "1m12s" in research
    assert "aaaaaaaaaa " in research
    assert "build?" in research
    assert '{"kind":"ok","notes":"three options"}' in research
    assert build.split()[:4] == ["◷", "build", "impl", "Pending"], (
        "a step not reached yet is listed as Pending"
    )


def test_get_shows_an_approval_steps_decision_and_who_made_it() -> None:
    decided = ApprovalStatus(decision="rejected", by="alice", at="2026-12-02T10:03:00Z", message="no tests")
    gate = StepStatus(
        name="research", phase=StepPhase.FAILED, message="step 'research' rejected by alice", approval=decided
    )
    text = workflow_view.describe(workflow_obj(WorkflowStatus(phase=WorkflowPhase.RUNNING, steps=[gate])))
    row = text[text.index("STEP") :].splitlines()[1]
    assert "rejected by alice: step 'research' rejected by alice" in row


def test_list_columns_and_a_suspended_workflow() -> None:
    status = WorkflowStatus(phase=WorkflowPhase.SUSPENDED, progress="0/2", start_time="2026-12-02T10:04:00Z")
    obj = workflow_obj(status, suspend=True)
    lines = workflow_view.list_table([obj], all_namespaces=True, wide=False, now=NOW).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "PROGRESS", "AGE", "DURATION"]
    assert lines[1].split() == ["team-a", "feature", "Suspended", "0/2", "5m0s", "1m0s"]
    assert "(suspended)" in workflow_view.describe(obj, now=NOW)


def test_watch_lines_say_what_changed_once() -> None:
    before = workflow_obj(WorkflowStatus(phase=WorkflowPhase.RUNNING, progress="0/2"))
    running = StepStatus(name="research", phase=StepPhase.RUNNING, attempts=1, agent="a-1")
    after = workflow_obj(WorkflowStatus(phase=WorkflowPhase.RUNNING, progress="0/2", steps=[running]))
    lines = workflow_view.changes(before, after)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "feature step research Running (attempt 1, agent a-1)"
    ]
    assert workflow_view.changes(after, after) == [], "no change, no line"
    failed = StepStatus(name="research", phase=StepPhase.FAILED, attempts=1, message="exit 3: lint")
    done = workflow_obj(
        WorkflowStatus(
            phase=WorkflowPhase.FAILED, progress="1/2", steps=[failed], message="step research failed",
            start_time="2026-12-02T10:00:00Z", completion_time="2026-12-02T10:00:09Z",
        )
    )  # fmt: skip
    out = [line.split(" ", 1)[1] for line in workflow_view.changes(after, done)]
    assert out == [
        "feature step research Failed (attempt 1: exit 3: lint)",
        "feature Failed 1/2 in 9s: step research failed",
    ]


def test_ages_and_tables_as_kubectl_prints_them() -> None:
    assert [render.span(s) for s in (0, 59, 61, 599, 600, 3700, 90000)] == [
        "0s", "59s", "1m1s", "9m59s", "10m", "1h1m", "1d1h",
    ]  # fmt: skip
    assert render.table(["a", "long header"], [["x", None], ["wider", "y"]]).splitlines() == [
        "A       LONG HEADER",
        "x       -",
        "wider   y",
    ]


def agent_lines(formatter: logging.Formatter) -> list[str]:
    """Lines written by the agent's own logger and formatter, for two runs and an unrelated event."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("codeforge_agent")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log = get_logger(pool="team-a/impl", agent="impl-1")
        log.info("agent started", extra={"event": "agent_started"})
        ours = log.bind(task_id=f"{UID}/build/v1/p0/a1", workflow=UID, step="build", attempt=1)
        ours.info("claimed", extra={"event": "claimed"})
        other = log.bind(task_id="other/build/v1/p0/a1", workflow="other-run", step="build", attempt=1)
        other.info("claimed", extra={"event": "claimed"})
        log.bind(task_id=f"{UID}/research/v1/p0/a1", workflow=UID, step="research").warning("slow model")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_logs_keep_the_lines_of_one_run_and_step_in_both_formats() -> None:
    for formatter in (JsonFormatter(), TextFormatter()):
        lines = agent_lines(formatter)
        assert len(lines) == 4
        kept = matching(lines, UID, None)
        assert [f.get("step") for f, _ in kept] == ["build", "research"], lines
        only_build = matching(lines, UID, "build")
        assert [line for _, line in only_build] == [lines[1]]
        shown = readable(*only_build[0])
        assert "claimed" in shown
        assert "task_id=" + f"{UID}/build/v1/p0/a1" in shown


def test_the_kubectl_plugin_entry_point_is_the_same_cli() -> None:
    plugin = Path(sys.executable).parent / "kubectl-codeforge"  # the console script kubectl finds on PATH
    out = subprocess.run([str(plugin), "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: kubectl codeforge" in out
    for command in (
        "list",
        "get",
        "watch",
        "logs",
        "submit",
        "retry",
        "suspend",
        "resume",
        "approve",
        "reject",
        "pools",
        "dlq",
        "run",
    ):
        assert f" {command} " in out, command


def test_the_names_the_cli_repeats_match_their_sources() -> None:
    # The CLI repeats a few names instead of importing the operator (Kopf, LangGraph) or the CEL library.
    from codeforge.api import workflow
    from codeforge.cli import kube, logs, workflows
    from codeforge.controller.agentpool.builders import CONTAINER_NAME, POOL_LABEL
    from codeforge.controller.workflow.retry import RETRY_ANNOTATION

    assert (kube.WORKFLOWS, kube.WORKFLOW_KIND) == (workflow.PLURAL, workflow.KIND)
    assert (logs.CONTAINER_NAME, logs.POOL_LABEL) == (CONTAINER_NAME, POOL_LABEL)
    assert workflows.RETRY_ANNOTATION == RETRY_ANNOTATION


def test_the_pools_table_shows_tasks_held_back_by_max_concurrency() -> None:
    from codeforge.cli.pools import pools_table

    pool = {
        "metadata": {"name": "research", "namespace": "team-a"},
        "spec": {"role": "research"},
        "status": {"phase": "Ready", "queued": 0, "heldBack": 36, "inFlight": 4},
    }
    header, row = pools_table([pool], all_namespaces=False, wide=False, expired=None).splitlines()[:2]
    assert dict(zip(header.split(), row.split(), strict=True))["HELD"] == "36"
