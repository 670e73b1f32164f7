"""Workspaces (issue #11): the Git repository a task works in, cached per pod, one worktree per task.

Plain asyncio + the `git` CLI; no Kubernetes. The agent (codeforge_agent) uses it around its handler.
"""

from codeforge.workspace.errors import ErrorKind, WorkspaceError, redact
from codeforge.workspace.git import Git
from codeforge.workspace.manager import (
    Checkout,
    Workspaces,
    WorkspaceSettings,
    WorkspaceStats,
    default_message,
)

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
