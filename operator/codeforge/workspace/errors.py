"""Workspace errors: one kind per cause, a message saying which and what to do, and if a retry helps."""

from __future__ import annotations

import enum
import re
from typing import Final


class ErrorKind(enum.StrEnum):
    AUTH = "auth"  # wrong or missing credentials
    HOST = "host"  # the host name does not resolve
    NETWORK = "network"  # connection refused/reset/timed out, server 5xx
    REPOSITORY = "repository"  # no repository at the URL
    MISSING = "missing"  # a ref or commit the task names does not exist
    REJECTED = "rejected"  # the server refused a push (protected branch, hook)
    CONFLICT = "conflict"  # merge of parts conflicts
    FULL = "full"  # the cache volume is full
    INVALID = "invalid"  # the task or the agent's configuration is wrong
    GIT = "git"  # anything else git reported


#: Kinds a retry can help with; the others need a person to change something first.
RETRYABLE: Final = frozenset({ErrorKind.HOST, ErrorKind.NETWORK, ErrorKind.FULL, ErrorKind.GIT})


class WorkspaceError(Exception):
    """A workspace step failed; `message` is safe to record (no credentials); `retryable`: a retry helps."""

    def __init__(self, kind: ErrorKind, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = kind in RETRYABLE if retryable is None else retryable


_USERINFO_RE: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def redact(text: str) -> str:
    """Drop any `user:password@` from URLs in `text` (git echoes URLs in its errors)."""
    return _USERINFO_RE.sub(r"\1***@", text)


#: (kind, substrings of git's lowercased stderr) in the order they are tried: the first match wins.
_PATTERNS: Final[tuple[tuple[ErrorKind, tuple[str, ...]], ...]] = (
    (ErrorKind.FULL, ("no space left on device", "disk quota exceeded", "file too large")),
    (
        ErrorKind.AUTH,
        (
            "authentication failed",
            "could not read username",
            "could not read password",
            "invalid username or password",
            "access denied",
            "permission denied (publickey",
            "returned error: 401",
            "returned error: 403",
            "host key verification failed",
        ),
    ),
    (
        ErrorKind.HOST,
        (
            "could not resolve host",
            "could not resolve hostname",
            "name or service not known",
            "temporary failure in name resolution",
            "no address associated with hostname",
        ),
    ),
    (
        ErrorKind.REJECTED,
        (
            "[remote rejected]",
            "! [rejected]",
            "pre-receive hook declined",
            "update hook declined",
            "protected branch",
            "non-fast-forward",
            "failed to push some refs",
        ),
    ),
    (
        ErrorKind.MISSING,
        (
            "couldn't find remote ref",
            "not our ref",
            "no such remote ref",
            "unadvertised object",
            "bad object",
            "not a valid object name",
            "unknown revision",
            "invalid object",
        ),
    ),
    (
        ErrorKind.REPOSITORY,
        (
            "repository not found",
            "does not appear to be a git repository",
            "returned error: 404",
            "not a git repository",
        ),
    ),
    (
        ErrorKind.NETWORK,
        (
            "connection refused",
            "connection reset",
            "connection timed out",
            "operation timed out",
            "failed to connect",
            "could not connect",
            "couldn't connect",
            "remote end hung up",
            "early eof",
            "rpc failed",
            "returned error: 5",
            "network is unreachable",
            "ssl",
            "tls",
        ),
    ),
)


def classify(stderr: str) -> ErrorKind:
    low = stderr.lower()
    if "fatal: repository '" in low and "' not found" in low:  # git's words for an HTTP 404
        return ErrorKind.REPOSITORY
    for kind, needles in _PATTERNS:
        if any(needle in low for needle in needles):
            return kind
    return ErrorKind.GIT


_ADVICE: Final = {
    ErrorKind.AUTH: "git rejected the credentials for {url}: check the username/password, token or SSH key "
    "(and known_hosts) in the AgentPool's spec.workspace.credentialsSecret",
    ErrorKind.HOST: "unknown host in {url}: check the Workflow's spec.workspace.git.url and the pod's DNS",
    ErrorKind.NETWORK: "cannot reach {url} (network or server error); the task will be retried",
    ErrorKind.REPOSITORY: "no repository at {url}: check the Workflow's spec.workspace.git.url",
    ErrorKind.MISSING: "{what} not found in {url}: check the ref (spec.workspace.git.ref) or that the step "
    "that produced it pushed it",
    ErrorKind.REJECTED: "the server rejected the push of {what} to {url} (protected branch or server hook): "
    "allow CodeForge to push there or choose another spec.workspace.git.pushBranch",
    ErrorKind.FULL: "the workspace cache volume is full while working on {url}: raise the AgentPool's "
    "spec.workspace.cacheSizeLimit; the cache was cleaned and the task will be retried",
    ErrorKind.GIT: "git failed on {url}",
}


def git_error(stderr: str, *, url: str, what: str, operation: str) -> WorkspaceError:
    """The WorkspaceError for a failed git command, with the advice for its kind and git's own last lines."""
    kind = classify(stderr)
    advice = _ADVICE.get(kind, _ADVICE[ErrorKind.GIT]).format(url=redact(url), what=what)
    detail = " | ".join(line.strip() for line in redact(stderr).strip().splitlines()[-4:] if line.strip())
    return WorkspaceError(kind, f"{operation}: {advice} (git: {detail[:600] or 'no output'})")
