"""Workspaces on the Workflow side (issue #11): spec.workspace validation, the refs and commits the
orchestrator picks per join, the status it reports and what `codeforge run` prints. The Git work itself is
tested end to end in tests/integration/test_workspace_flow.py."""

from __future__ import annotations

from typing import Any

import pytest

from codeforge.api.task import WorkspaceAction
from codeforge.api.workflow import WorkflowSpecError, parse_workflow_spec
from codeforge.api.workflow_status import WorkflowStatus
from codeforge.api.workspace import safe_ref_part
from codeforge.controller.workflow.tracker import WorkflowTracker
from codeforge.embedded.command import workspace_summary
from codeforge.embedded.progress import ProgressBoard
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowOutcome
from codeforge.orchestrator import workspace as ws
from codeforge.orchestrator.joins import join

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


def make_spec(repo: Any = None, **step: Any) -> Any:
    data: dict[str, Any] = {"steps": [{"name": "work", "pool": "impl", **step}]}
    if repo is not None:
        data["workspace"] = repo
    return parse_workflow_spec(data)


def problems(repo: Any = None, **step: Any) -> str:
    with pytest.raises(WorkflowSpecError) as info:
        make_spec(repo, **step)
    return str(info.value)


def test_workspace_defaults_and_camel_case() -> None:
    spec = make_spec({"git": {"url": "https://git.example.com/team/service.git"}})
    assert spec.workspace is not None
    git = spec.workspace.git
    assert (git.ref, git.push_branch) == ("HEAD", "codeforge/{{workflow}}")
    assert git.branch_for("feature-x") == "refs/heads/codeforge/feature-x"
    custom = make_spec(
        {"git": {"url": "ssh://git@host/x.git", "ref": "main", "pushBranch": "ai/{{workflow}}/out"}}
    )
    assert custom.workspace is not None
    assert custom.workspace.git.branch_for("wf") == "refs/heads/ai/wf/out"
    assert make_spec().workspace is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://bot:s3cret@git.example.com/x.git", "must not contain credentials"),
        ("https://ghp_token@git.example.com/x.git", "must not contain credentials"),
        ("ssh://git:pw@host/x.git", "must not contain credentials"),
        ("ftp://host/x.git", "must start with one of"),
        ("git@host:team/x.git", "must start with one of"),
    ],
)
def test_bad_urls_are_refused_naming_the_field_without_echoing_secrets(url: str, expected: str) -> None:
    message = problems({"git": {"url": url}})
    assert message.startswith("spec.workspace.git.url: ")
    assert expected in message
    assert "s3cret" not in message
    assert "ghp_token" not in message
    assert ":pw@" not in message
    if expected == "must not contain credentials":
        assert "credentialsSecret" in message


def test_refs_branches_and_lengths_are_checked() -> None:
    assert "spec.workspace.git.ref" in problems({"git": {"url": "file:///r.git", "ref": "a..b"}})
    assert "spec.workspace.git.pushBranch" in problems({"git": {"url": "file:///r.git", "pushBranch": "x y"}})
    assert "spec.workspace.git.url" in problems({"git": {"url": "https://h/" + "x" * 3000}})
    assert "spec.workspace.git" in problems({"git": {"url": "file:///r.git", "extra": 1}})
    assert (
        make_spec({"git": {"url": "file:///r.git", "ref": "refs/tags/v1.0"}}).workspace.git.ref
        == "refs/tags/v1.0"
    )


def test_merge_needs_a_fan_out_joined_with_all_and_a_repository() -> None:
    assert "workspace.merge" in problems({"git": {"url": "file:///r.git"}}, workspace={"merge": True})
    fan = {"parallel": 2, "workspace": {"merge": True}}
    assert "join: all" in problems({"git": {"url": "file:///r.git"}}, join="firstSuccess", **fan)
    message = problems(None, **fan)
    assert "spec.steps[0].workspace.merge" in message
    assert "spec.workspace.git" in message
    assert make_spec({"git": {"url": "file:///r.git"}}, **fan).steps[0].merges


def test_refs_are_unique_per_workflow_step_visit_and_part_and_valid() -> None:
    assert ws.step_ref("ns/wf-1", "implement", 2, 0) == "refs/codeforge/ns/wf-1/implement/v2/p0"
    assert ws.step_ref("wf", "a", 1, 0) != ws.step_ref("wf", "a", 1, 1) != ws.step_ref("wf", "a", 2, 0)
    assert safe_ref_part("my wf:..x.lock") == "my-wf-..x"  # git refuses ':' and '.lock' endings
    assert safe_ref_part("/.hidden/") == "hidden"
    spec = make_spec({"git": {"url": "file:///r.git"}})
    checkout = ws.checkout_request(spec.workspace, A, "wf id", "work", 1, 3)
    assert (checkout.action, checkout.base, checkout.push_ref) == (
        WorkspaceAction.CHECKOUT,
        A,
        "refs/codeforge/wf-id/work/v1/p3",
    )
    publish = ws.publish_request(spec.workspace, A, B, "feature")
    assert (publish.action, publish.push_ref, publish.commit, publish.base) == (
        WorkspaceAction.PUBLISH,
        "refs/heads/codeforge/feature",
        B,
        A,
    )


def part(index: int, commit: str | None, status: str = "succeeded", **result: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(result)
    if commit is not None:
        body["workspace"] = {"base": A, "commit": commit, "changed": commit != A}
    return {"index": index, "status": status, "result": body, "finished": float(index)}


def test_winners_carry_their_commit() -> None:
    first = make_spec({"git": {"url": "file:///r.git"}}, parallel=3, join="firstSuccess").steps[0]
    parts = [part(0, B, "failed"), part(1, C), part(2, D)]
    parts[2]["finished"] = 0.5  # part 2 finished first
    joined = join(first, {str(p["index"]): p for p in parts})
    assert ws.winner_index(first, parts, joined) == 2

    majority = make_spec({"git": {"url": "file:///r.git"}}, parallel=3, join="majority").steps[0]
    parts = [part(0, B, choice="x"), part(1, C, choice="y"), part(2, D, choice="y")]
    joined = join(majority, {str(p["index"]): p for p in parts})
    assert ws.winner_index(majority, parts, joined) == 1  # the first part that voted for the winner


def test_a_merge_joins_only_the_parts_that_changed_something() -> None:
    parts = [part(2, D), part(0, A), part(1, B), part(3, B)]
    assert ws.changed_commits(parts, A) == [B, D]  # index order, no duplicates, unchanged parts left out
    assert ws.reported({"workspace": {"commit": "not-a-sha"}}) is None
    assert ws.reported("plain") is None


def test_the_status_shows_base_commit_branch_and_diffstat() -> None:
    spec = make_spec({"git": {"url": "file:///r.git", "ref": "main"}})
    tracker = WorkflowTracker.from_status(spec, {}, 1)
    tracker.apply(ProgressEvent(EventKind.WORKFLOW_STARTED, "wf"))
    tracker.apply(
        ProgressEvent(
            EventKind.WORKSPACE_RESOLVED,
            "wf",
            commit=A,
            detail={"url": "file:///r.git", "ref": "main", "commit": A},
        )
    )
    tracker.apply(ProgressEvent(EventKind.STEP_STARTED, "wf", "work", parts=1))
    tracker.apply(ProgressEvent(EventKind.STEP_FINISHED, "wf", "work", status="succeeded", commit=B))
    running = tracker.render()
    assert running["workspace"] == {
        "url": "file:///r.git",
        "ref": "main",
        "base": A,
        "commit": B,
    }
    assert running["steps"][0]["commit"] == B
    stat = {"files": 2, "insertions": 10, "deletions": 1}
    tracker.apply(
        ProgressEvent(
            EventKind.WORKSPACE_PUBLISHED,
            "wf",
            commit=B,
            detail={"branch": "codeforge/wf", "commit": B, "diffstat": stat, "files": ["a.py", "b.py"]},
        )
    )
    done = WorkflowOutcome(
        "wf", "succeeded", {}, None, [], 1.0, workspace={"base": A, "commit": B, "branch": "codeforge/wf"}
    )
    tracker.finish(done, None, None)
    status = tracker.render()
    assert status["workspace"]["branch"] == "codeforge/wf"
    assert status["workspace"]["diffstat"] == stat
    assert status["workspace"]["files"] == ["a.py", "b.py"]
    WorkflowStatus.model_validate(status)  # the CRD schema's model accepts it
    restarted = WorkflowTracker.from_status(spec, status, 1)
    assert restarted.render()["workspace"] == status["workspace"]


def test_codeforge_run_prints_the_branch_commit_and_diffstat() -> None:
    published = {
        "url": "file:///r.git",
        "ref": "main",
        "base": A,
        "commit": B,
        "branch": "codeforge/wf",
        "diffstat": {"files": 1, "insertions": 3, "deletions": 0},
        "files": ["textkit/words.py"],
    }
    lines = workspace_summary(published, succeeded=True)
    assert lines[1] == f"branch: codeforge/wf @ {B[:12]}"
    assert lines[2] == f"diffstat against {A[:12]}: 1 file(s) changed, +3 -0"
    assert lines[3].strip() == "textkit/words.py"
    failed = workspace_summary(
        {"url": "file:///r.git", "ref": "main", "base": A, "commit": C}, succeeded=False
    )
    assert "not published" in failed[1]
    assert "refs/codeforge/" in failed[1]

    board = ProgressBoard(make_spec({"git": {"url": "file:///r.git"}}))
    resolved = ProgressEvent(EventKind.WORKSPACE_RESOLVED, "wf", commit=A, detail={"ref": "main"})
    board.apply(resolved)
    finished = ProgressEvent(
        EventKind.STEP_FINISHED, "wf", "work", status="succeeded", commit=B, duration=1.0
    )
    board.apply(finished)
    assert board.rows["work"].commit == B[:10]
    assert board.line(resolved) == f"workspace: main @ {A[:10]}"
    assert board.line(finished) == f"step work: succeeded in 1.00s -> {B[:10]}"


def test_workspace_url_option_replaces_the_url_and_refuses_credentials() -> None:
    from pathlib import Path

    from codeforge.embedded.command import _with_workspace_url
    from codeforge.embedded.manifest import ManifestError, load_manifest

    flagship = Path(__file__).resolve().parents[2] / "examples" / "workflows" / "feature-development.yaml"
    loaded = load_manifest(flagship)
    moved = _with_workspace_url(loaded, "https://git.example.com/team/app.git")
    assert moved.workflow.spec.workspace is not None
    assert moved.workflow.spec.workspace.git.url == "https://git.example.com/team/app.git"
    assert moved.workflow.spec.workspace.git.ref == "main"  # the rest of spec.workspace stays
    with pytest.raises(ManifestError) as info:
        _with_workspace_url(loaded, "https://bot:hunter2@git.example.com/app.git")
    assert str(info.value).startswith("--workspace-url: ")
    assert "hunter2" not in str(info.value)
