"""Workspaces (issue #11): the code a Workflow works on travels from step to step as Git commits.

The run resolves `spec.workspace.git.ref` to a commit once (a `resolve` system task, checkpointed with the
first node), every task of a step starts from the commit its predecessor reported and pushes its own output to
a ref unique to workflow/step/visit/part, a fan-out's join picks (or merges) the step's output commit, and a
succeeded run publishes its final commit to `pushBranch`. The agents do the Git work (codeforge.workspace);
this module only decides which commit goes where. Wire format: the TaskWorkspace model in api/task.py.
A failed run leaves its step refs (refs/codeforge/<run>/...) for inspection; forgetting the run (the Workflow
was deleted) dispatches a `cleanup` system task that deletes them (see WorkflowRunner.forget).
"""

from __future__ import annotations

import re
from typing import Any, Final

from codeforge.api.outcome import Outcome
from codeforge.api.task import STEP_REFS_ROOT, TaskWorkspace, WorkspaceAction, unchanged_workspace
from codeforge.api.workflow import JoinPolicy, Step
from codeforge.api.workspace import WorkspaceSpec, safe_ref_part
from codeforge.orchestrator.joins import Joined, vote_of

COMMIT_RE: Final = re.compile(r"^[0-9a-f]{40}$")
#: Attempts of a system task (resolve, merge, publish): a retryable failure (network) is retried by the
#: queue; a permanent one (wrong credentials, missing ref, conflict, rejected push) fails at once.
SYSTEM_TASK_ATTEMPTS: Final = 3
#: Changed file names kept in the status and the summary (the step's own result has up to 1000).
STATUS_FILES_LIMIT: Final = 50


def resolve_task_id(workflow: str) -> str:
    # `_` cannot start a step name, so system ids never collide with `<workflow>/<step>/v.../a...`
    return f"{workflow}/_resolve"


def publish_task_id(workflow: str) -> str:
    return f"{workflow}/_publish"


def merge_task_id(workflow: str, step: str, visit: int) -> str:
    return f"{workflow}/{step}/v{visit}/_merge"


def cleanup_task_id(workflow: str) -> str:
    return f"{workflow}/_cleanup"


def run_refs(workflow: str) -> str:
    """The prefix of every step ref of a run (what a cleanup deletes; pushBranch is under refs/heads/)."""
    return f"{STEP_REFS_ROOT}{safe_ref_part(workflow)}/"


def step_ref(workflow: str, step: str, visit: int, index: int) -> str:
    """Where one part's output commit is pushed: the same ref for every attempt of the part, so the commit
    the fenced completion reports is the part's output and a lost agent's late push changes nothing."""
    return f"{run_refs(workflow)}{step}/v{visit}/p{index}"


def merge_ref(workflow: str, step: str, visit: int) -> str:
    return f"{run_refs(workflow)}{step}/v{visit}/merged"


def resolve_request(spec: WorkspaceSpec) -> TaskWorkspace:
    return TaskWorkspace(url=spec.git.url, action=WorkspaceAction.RESOLVE, ref=spec.git.ref)


def checkout_request(
    spec: WorkspaceSpec, base: str, workflow: str, step: str, visit: int, index: int
) -> TaskWorkspace:
    return TaskWorkspace(url=spec.git.url, base=base, push_ref=step_ref(workflow, step, visit, index))


def merge_request(
    spec: WorkspaceSpec, base: str, parts: list[str], workflow: str, step: str, visit: int
) -> TaskWorkspace:
    return TaskWorkspace(
        url=spec.git.url,
        action=WorkspaceAction.MERGE,
        base=base,
        parts=parts,
        push_ref=merge_ref(workflow, step, visit),
    )


def publish_request(spec: WorkspaceSpec, base: str, commit: str, name: str) -> TaskWorkspace:
    return TaskWorkspace(
        url=spec.git.url,
        action=WorkspaceAction.PUBLISH,
        base=base,
        commit=commit,
        push_ref=spec.git.branch_for(name),
    )


def cleanup_request(url: str, workflow: str) -> TaskWorkspace:
    return TaskWorkspace(url=url, action=WorkspaceAction.CLEANUP, push_ref=run_refs(workflow))


def reported(result: Any) -> dict[str, Any] | None:
    """The `workspace` object a task's result carries, when it names a commit."""
    if not isinstance(result, dict):
        return None
    info = result.get("workspace")
    if isinstance(info, dict) and isinstance(info.get("commit"), str) and COMMIT_RE.match(info["commit"]):
        return info
    return None


def unchanged(base: str) -> dict[str, Any]:
    """The workspace record of a step that passed its input on."""
    return unchanged_workspace(base)


def compact(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """A workspace record small enough for the status and the history (files capped)."""
    if info is None:
        return None
    files = list(info.get("files") or [])
    out: dict[str, Any] = {
        k: info.get(k) for k in ("base", "commit", "changed", "ref", "diffstat") if k in info
    }
    if files:
        out["files"] = files[:STATUS_FILES_LIMIT]
        if len(files) > STATUS_FILES_LIMIT:
            out["filesOmitted"] = len(files) - STATUS_FILES_LIMIT
    return out


def winner_index(step: Step, parts: list[dict[str, Any]], joined: Joined) -> int | None:
    """The part whose commit a firstSuccess or majority join carries (None: keep the input commit)."""
    succeeded = [p for p in parts if p["status"] == Outcome.SUCCEEDED]
    if not succeeded:
        return None
    if not step.fans_out:
        return int(succeeded[0]["index"])
    if step.join is JoinPolicy.FIRST_SUCCESS:
        first = min(succeeded, key=lambda p: (p.get("finished", 0), p["index"]))
        return int(first["index"])
    if step.join is JoinPolicy.MAJORITY and isinstance(joined.result, dict):
        choice = joined.result.get(step.vote_field)
        for part in sorted(succeeded, key=lambda p: int(p["index"])):
            if vote_of(part.get("result"), step.vote_field) == choice:
                return int(part["index"])
    return None


def changed_commits(parts: list[dict[str, Any]], base: str) -> list[str]:
    """The commits of the parts that changed the tree, in index order (what a merge join merges)."""
    commits: list[str] = []
    for part in sorted(parts, key=lambda p: int(p["index"])):
        info = reported(part.get("result"))
        if info is not None and info["commit"] != base and info["commit"] not in commits:
            commits.append(info["commit"])
    return commits
