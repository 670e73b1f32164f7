"""Workspaces (issue #11): the Git repository a task works in, cached per pod, one worktree per task.

Plain asyncio + the `git` CLI; no Kubernetes. The agent (codeforge_agent) uses it around its handler.
`cache.py` keeps one bare repository per URL on the pod's volume, `worktrees.py` hands out a worktree per
task (with a spare made in the background), `actions.py` does what a task asks (checkout, resolve, merge,
publish, cleanup) with them.
"""

from codeforge.workspace.actions import Workspaces, default_message
from codeforge.workspace.cache import WorkspaceSettings, WorkspaceStats
from codeforge.workspace.errors import ErrorKind, WorkspaceError, redact
from codeforge.workspace.git import Git
from codeforge.workspace.worktrees import Checkout

__all__ = [
    "Checkout",
    "ErrorKind",
    "Git",
    "WorkspaceError",
    "WorkspaceSettings",
    "WorkspaceStats",
    "Workspaces",
    "default_message",
    "redact",
]
