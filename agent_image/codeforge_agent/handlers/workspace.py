"""Workspaces around any handler (issue #11): the task's Git worktree before it, commit + push after it.

A task without `workspace` goes straight to the handler. With one:
- `checkout`: a fresh worktree at `base` from the per-pod cache; the handler runs in it (command: working
  directory; python: `context.workspace`); after it succeeds, a changed tree is committed (message: the
  result's `commit_message`, else "codeforge: <step> of <workflow>") and force-pushed to `push_ref`. The
  result is the handler's (a dict keeps its keys, anything else becomes {"output": value}) plus
  "workspace": {base, commit, changed, ref, files, diffstat}. The worktree is removed afterwards; the cache
  stays. http and openai handlers cannot see files: for them the workspace is passed through unchanged.
- `resolve`, `merge`, `publish`, `cleanup` (delete a run's step refs): done by the agent itself, without the
  handler.
Errors become HandlerErrors whose message says which and what to do, retryable only where a retry helps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final

from codeforge.api.task import Task, WorkspaceAction
from codeforge.workspace import WorkspaceError, Workspaces, WorkspaceSettings
from codeforge_agent.handlers.base import Handler, HandlerError, TaskContext

#: Handler kinds that never see the worktree (they run elsewhere): nothing to materialise for them.
FILELESS_KINDS: Final = frozenset({"http", "openai"})
MAX_COMMIT_MESSAGE: Final = 64 * 1024


class WorkspaceHandler:
    """Wraps the pool's handler; builds the Git cache on the first task that has a workspace."""

    def __init__(self, inner: Handler, settings: WorkspaceSettings) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.settings = settings
        self._workspaces: Workspaces | None = None

    @property
    def load_error(self) -> str | None:
        error = getattr(self.inner, "load_error", None)
        return error if isinstance(error, str) else None

    @property
    def workspaces(self) -> Workspaces:
        if self._workspaces is None:
            try:
                self._workspaces = Workspaces(self.settings)
            except WorkspaceError as exc:
                raise HandlerError(f"workspace: {exc.message}", retryable=exc.retryable) from None
        return self._workspaces

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        spec = task.workspace
        if spec is None:
            return await self.inner(task, context)
        if spec.action is WorkspaceAction.CHECKOUT and self.kind in FILELESS_KINDS:
            assert spec.base is not None
            output = await self.inner(task, context)
            unchanged = {"base": spec.base, "commit": spec.base, "changed": False, "ref": None, "files": []}
            unchanged["diffstat"] = {"files": 0, "insertions": 0, "deletions": 0}
            return merge_result(output, unchanged)

        async def run_handler(path: Path) -> tuple[Any, str | None]:
            output = await self.inner(task, dataclasses.replace(context, workspace=path))
            return output, commit_message(output)

        try:
            workspace, output = await self.workspaces.run(
                spec,
                workflow=task.workflow,
                step=task.step,
                label=task.id,
                handler=run_handler if spec.action is WorkspaceAction.CHECKOUT else None,
            )
        except WorkspaceError as exc:
            context.log.warning(
                "workspace %s failed (%s): %s", spec.action.value, exc.kind.value, exc.message,
                extra={"event": "workspace_error"},
            )  # fmt: skip
            raise HandlerError(
                f"workspace {spec.action.value}: {exc.message}", retryable=exc.retryable
            ) from None
        if workspace.get("changed"):
            context.log.info(
                "workspace %s: commit %s pushed to %s (%d files)",
                spec.action.value,
                workspace["commit"],
                workspace["ref"],
                len(workspace["files"]),
                extra={"event": "workspace_pushed"},
            )
        if spec.action is WorkspaceAction.CHECKOUT:
            return merge_result(output, workspace)
        return {"workspace": workspace}

    async def aclose_workspaces(self) -> None:
        """Wait for worktree removals still running (the cache stays)."""
        if self._workspaces is not None:
            await self._workspaces.aclose()

    async def aclose(self) -> None:
        await self.aclose_workspaces()
        await self.inner.aclose()


def commit_message(output: Any) -> str | None:
    """The handler's `commit_message`, when its result is a dict carrying a non-empty string there."""
    if isinstance(output, dict):
        message = output.get("commit_message")
        if isinstance(message, str) and message.strip():
            return message[:MAX_COMMIT_MESSAGE]
    return None


def merge_result(output: Any, workspace: dict[str, Any]) -> dict[str, Any]:
    """The handler's result with the `workspace` key (a dict keeps its keys; anything else is `output`)."""
    result = dict(output) if isinstance(output, dict) else {"output": output}
    result["workspace"] = workspace
    return result
