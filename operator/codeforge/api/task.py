"""The Task model: one unit of work in an AgentPool's queue, and what a finished task leaves behind."""

from __future__ import annotations

import enum
import hashlib
import json
import re
import time
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

#: Payloads are JSON; anything larger than this belongs in object storage, referenced from the payload.
from codeforge.api.limits import (
    MAX_CONCURRENCY,
    MAX_FAIR_KEY,
    MAX_FAIR_WEIGHT,
    MAX_JSON_DEPTH,
    MAX_RESULT_BYTES,
    clip,
    clip_text,
    too_deep,
)
from codeforge.api.limits import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES

#: Pool names become Redis hash tags (`{pool}`), so braces are excluded; `namespace/name` is allowed.
POOL_NAME_RE: Final = re.compile(
    r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)?$"
)
TASK_ID_RE: Final = re.compile(r"^[A-Za-z0-9._:/@=+-]{1,256}$")
#: An agent's death (a lost lease) is not the handler failing, so it spends a budget of its own, not the
#: step's retries, with a backoff that doubles per loss up to this cap (the Redis scripts hold it in lib.lua).
DEFAULT_MAX_LOST_LEASES: Final = 10
LOST_LEASE_BACKOFF_CAP_SECONDS: Final = 60.0

JSONValue = Any

# --- workspaces (issue #11): the repository a task works in ----------------------------------------------

#: Git URL schemes a workspace may use; scp-like `user@host:path` is refused (use ssh://user@host/path).
WORKSPACE_URL_SCHEMES: Final = frozenset({"https", "http", "ssh", "git", "file"})
MAX_WORKSPACE_URL: Final = 2048
MAX_GIT_REF: Final = 1024
MAX_MERGE_PARTS: Final = 64
COMMIT_RE: Final = re.compile(r"^[0-9a-f]{40}$")
#: Where a run's step refs live; a cleanup deletes the refs under one run's prefix (never a branch).
STEP_REFS_ROOT: Final = "refs/codeforge/"
#: git check-ref-format, simplified: no control characters, space, ~^:?*[\ , no "..", "@{", "//", no
#: leading "-" or "/", no trailing "/", "." or ".lock", no component starting with ".".
_REF_BAD_RE: Final = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/]|/$|\.$|\.lock$|\.lock/|(^|/)\.")


def validate_git_ref(value: str, field: str, *, full: bool = False) -> str:
    """A ref name git accepts (`main`, `v1.2`, `refs/heads/x`); `full` demands a `refs/...` name."""
    if not value or len(value) > MAX_GIT_REF or _REF_BAD_RE.search(value) or value == "@":
        raise ValueError(
            f"{field} {value[:80]!r} is not a valid git ref name: use letters, digits and ./_- separated by "
            f"'/', at most {MAX_GIT_REF} characters (see git check-ref-format)"
        )
    if full and not value.startswith("refs/"):
        raise ValueError(f"{field} {value[:80]!r} must be a full ref such as 'refs/heads/{value[:40]}'")
    return value


def validate_cleanup_prefix(value: str) -> str:
    """A cleanup's prefix: one run's step refs, `refs/codeforge/<run>/` (so never a branch or a tag)."""
    inner = value.removesuffix("/")
    if not value.endswith("/") or not inner.startswith(STEP_REFS_ROOT) or inner == STEP_REFS_ROOT.rstrip("/"):
        raise ValueError(
            f"push_ref {value[:80]!r} of a cleanup must be a run's prefix such as '{STEP_REFS_ROOT}<run>/' "
            "(ending in '/')"
        )
    validate_git_ref(inner, "push_ref", full=True)
    return value


def validate_workspace_url(url: str) -> str:
    """Accept a credential-free git URL; the error never echoes a URL that carries a secret."""
    if len(url) > MAX_WORKSPACE_URL:
        raise ValueError(f"workspace url is longer than {MAX_WORKSPACE_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("workspace url contains whitespace or control characters: percent-encode them")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ValueError("workspace url is not a valid URL (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in WORKSPACE_URL_SCHEMES:
        raise ValueError(
            "workspace url must start with one of https://, http://, ssh://, git://, file:// "
            "(for scp-like 'git@host:path' write 'ssh://git@host/path')"
        )
    # Secrets travel as files (the AgentPool's spec.workspace.credentialsSecret), never inside a URL that
    # would end up in payloads, logs and status. An ssh user name alone (ssh://git@host) is not a secret.
    if parts.password is not None or (parts.username is not None and scheme != "ssh"):
        raise ValueError(
            "workspace url must not contain credentials (user:password@ or token@): remove them and put "
            "them in the AgentPool's spec.workspace.credentialsSecret"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("workspace url file:// must name an absolute local path (file:///srv/repo.git)")
    elif not parts.hostname:
        raise ValueError(f"workspace url {scheme}:// must name a host")
    if not parts.path.strip("/"):
        raise ValueError("workspace url must name a repository path")
    return url


class WorkspaceAction(enum.StrEnum):
    """What the agent does with a task's workspace. Only `checkout` runs the pool's handler."""

    CHECKOUT = "checkout"  # worktree at `base`, run the handler inside, commit + push a changed tree
    RESOLVE = "resolve"  # resolve `ref` to a commit
    MERGE = "merge"  # merge `parts` into `base`, push to `push_ref`
    PUBLISH = "publish"  # push `commit` to `push_ref`
    CLEANUP = "cleanup"  # delete every ref under the prefix `push_ref` (refs/codeforge/<run>/)


def unchanged_workspace(base: str) -> dict[str, Any]:
    """The `workspace` record of a result whose tree did not change: its commit is its base."""
    return {
        "base": base,
        "commit": base,
        "changed": False,
        "ref": None,
        "files": [],
        "diffstat": {"files": 0, "insertions": 0, "deletions": 0},
    }


class TaskWorkspace(BaseModel):
    """The repository a task works in: where it is, the commit to start from and where its output goes."""

    # hide_input_in_errors: a refused URL may carry a password; the error must not repeat it.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    url: str = Field(
        max_length=MAX_WORKSPACE_URL,
        description="Repository URL (https, http, ssh, git or file); never with credentials in it.",
    )
    action: WorkspaceAction = Field(default=WorkspaceAction.CHECKOUT, description="What the agent does.")
    ref: str | None = Field(
        default=None, max_length=MAX_GIT_REF, description="resolve: the branch, tag or commit to resolve."
    )
    base: str | None = Field(
        default=None, max_length=40, description="checkout/merge: the 40-hex commit the work starts from."
    )
    parts: list[str] = Field(
        default_factory=list,
        max_length=MAX_MERGE_PARTS,
        description="merge: the 40-hex commits merged into base, in order.",
    )
    push_ref: str | None = Field(
        default=None,
        max_length=MAX_GIT_REF,
        description="checkout/merge: the full ref the output commit is force-pushed to "
        "(refs/codeforge/<workflow>/<step>/v<visit>/p<index>); publish: refs/heads/<branch>; "
        "cleanup: the prefix refs/codeforge/<workflow>/ whose refs are deleted.",
    )
    commit: str | None = Field(
        default=None, max_length=40, description="publish: the 40-hex commit pushed to push_ref."
    )

    @field_validator("action", mode="before")
    @classmethod
    def _parse_action(cls, value: object) -> object:
        # strict mode refuses the plain string JSON carries; accept the enum's values explicitly.
        if isinstance(value, str) and not isinstance(value, WorkspaceAction):
            try:
                return WorkspaceAction(value)
            except ValueError:
                names = ", ".join(a.value for a in WorkspaceAction)
                raise ValueError(f"unknown workspace action {value[:40]!r}: use one of {names}") from None
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_workspace_url(value)

    @field_validator("base", "commit")
    @classmethod
    def _check_commit(cls, value: str | None) -> str | None:
        if value is not None and not COMMIT_RE.match(value):
            raise ValueError(f"{value[:80]!r} is not a commit: give the full 40-hex SHA-1 in lowercase")
        return value

    @field_validator("parts")
    @classmethod
    def _check_parts(cls, value: list[str]) -> list[str]:
        for sha in value:
            if not COMMIT_RE.match(sha):
                raise ValueError(f"parts: {sha[:80]!r} is not a commit: give full 40-hex SHA-1s in lowercase")
        return value

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str | None) -> str | None:
        return None if value is None else validate_git_ref(value, "ref")

    @field_validator("push_ref")
    @classmethod
    def _check_push_ref(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("action") is WorkspaceAction.CLEANUP:
            return validate_cleanup_prefix(value)
        return validate_git_ref(value, "push_ref", full=True)

    @model_validator(mode="after")
    def _check_action_fields(self) -> TaskWorkspace:
        needs = {
            WorkspaceAction.CHECKOUT: ("base",),
            WorkspaceAction.RESOLVE: ("ref",),
            WorkspaceAction.MERGE: ("base", "parts", "push_ref"),
            WorkspaceAction.PUBLISH: ("commit", "push_ref"),
            WorkspaceAction.CLEANUP: ("push_ref",),
        }[self.action]
        missing = [name for name in needs if not getattr(self, name)]
        if missing:
            raise ValueError(f"workspace action {self.action.value!r} needs {', '.join(missing)}")
        return self


class Priority(enum.IntEnum):
    """Lower value runs first; FIFO within one priority."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Accept a Priority, its name in any case, or its number; reject anything else clearly."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
            # ASCII digits only, and few: int() also reads '٣' as 3, and refuses 5,000 digits (ValueError).
            if value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 3:
                value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(f"{p.name} ({p.value})" for p in cls)
        raise ValueError(f"unknown priority {clip(value)}: use one of {names}")


class TaskState(enum.StrEnum):
    QUEUED = "queued"  # waiting in the pool's queue (or delayed for a retry backoff)
    RUNNING = "running"  # claimed under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # permanent failure reported by the handler
    DEAD = "dead"  # out of attempts: kept in the dead-letter queue with its reason
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL: Final = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED})


_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
#: What bounds a payload and stores a result: JSON without spaces, ASCII (the rest escaped), no NaN. One
#: encoder for the process: `json.dumps` with these options builds one per call, on every task's validation.
COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def validate_fair_key(value: str, field: str) -> str:
    """A fairness key: at most MAX_FAIR_KEY printable characters (control characters are reserved)."""
    if len(value) > MAX_FAIR_KEY or _CONTROL_RE.search(value):
        raise ValueError(
            f"{field} {clip(value)} must be at most {MAX_FAIR_KEY} characters without control characters "
            "(newlines, tabs, NUL): e.g. a team or repository name"
        )
    return value


def validate_pool_name(pool: str) -> str:
    if not isinstance(pool, str) or not POOL_NAME_RE.match(pool):
        raise ValueError(
            f"invalid pool name {clip(pool)}: use a lowercase DNS-1123 name such as 'research', "
            "optionally prefixed by a namespace ('team-a/research')"
        )
    return pool


class Task(BaseModel):
    """What a producer enqueues. Immutable once queued; the queue tracks attempts and state beside it."""

    # hide_input_in_errors: a refused workspace URL may carry a password (and payloads run to 512 KiB).
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, hide_input_in_errors=True)

    id: str = Field(description="Caller-chosen id; enqueue is idempotent on it within a pool.")
    pool: str = Field(description="The AgentPool whose queue holds the task.")
    workflow: str = Field(
        default="", description="Owning Workflow (uid or namespace/name), empty for ad-hoc tasks."
    )
    step: str = Field(default="", description="Workflow step that produced the task.")
    priority: Priority = Priority.MEDIUM
    payload: JSONValue = Field(default=None, description="Free JSON handed to the agent's handler.")
    attempts: int = Field(
        default=0,
        ge=0,
        validate_default=True,  # so a queue's count replaces it even when the record leaves it out
        description="Deliveries so far, claims given back unstarted not counted (set by the queue).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="The handler's budget: runs that may end in a retryable failure. The max_attempts-th "
        "such failure dead-letters the task; lost leases and drains do not count.",
    )
    max_lost_leases: int = Field(
        default=DEFAULT_MAX_LOST_LEASES,
        ge=1,
        le=1000,
        description="The lost-lease budget: times the task's agent may vanish (no heartbeat within the "
        "lease: killed, evicted, preempted) or stop mid-task on a drain, before the task is dead-lettered.",
    )
    lost_lease_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="Wait before redelivering a task whose lease was lost; it doubles with each loss, up to "
        f"{LOST_LEASE_BACKOFF_CAP_SECONDS:g} s, so a task that kills its agent does not crash-loop the pool.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="Lease length when the claiming consumer names none (agents name their pool's "
        "spec.queue.leaseSeconds).",
    )
    created_at: float = Field(default_factory=time.time, description="Unix time of creation.")
    deadline: float | None = Field(default=None, description="Unix time after which the task's work is moot.")
    workspace: TaskWorkspace | None = Field(
        default=None,
        description="The Git workspace the agent materialises for the task (issue #11); None: no files.",
    )
    fair_key: str = Field(
        default="",
        max_length=MAX_FAIR_KEY,
        description="Fair share: tasks of one pool and priority are served key by key in turn, FIFO within a "
        "key; empty: the task's workflow is its key.",
    )
    fair_weight: int = Field(
        default=1,
        ge=1,
        le=MAX_FAIR_WEIGHT,
        description="The key's share: turns per round (1: plain round-robin).",
    )
    max_concurrency: int = Field(
        default=0,
        ge=0,
        le=MAX_CONCURRENCY,
        description="At most this many tasks of the key run at once in the pool (0: no cap); the key's "
        "latest queued task sets it.",
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not TASK_ID_RE.match(value):
            raise ValueError(
                f"task id must be 1-256 characters of letters, digits and ._:/@=+- (got {value[:80]!r})"
            )
        return value

    @field_validator("attempts", mode="before")
    @classmethod
    def _queue_count(cls, value: object, info: ValidationInfo) -> object:
        """A queue reading a stored task passes its count of deliveries (`context={"attempts": n}`): it
        replaces the stored one in the one validation, where a copy with an update would be a second."""
        if info.context is not None and "attempts" in info.context:
            return info.context["attempts"]
        return value

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: str) -> str:
        return validate_pool_name(value)

    @field_validator("fair_key")
    @classmethod
    def _check_fair_key(cls, value: str) -> str:
        return validate_fair_key(value, "fair_key")

    @property
    def fairness_key(self) -> str:
        """The key the queue shares its turns by: `fair_key`, else the workflow (hashed when too long)."""
        if self.fair_key:
            return self.fair_key
        if len(self.workflow) <= MAX_FAIR_KEY and not _CONTROL_RE.search(self.workflow):
            return self.workflow
        return "workflow-sha256:" + hashlib.sha256(self.workflow.encode()).hexdigest()

    def stored_json(self) -> str:
        """The task as a queue stores it: the fields at their defaults are left out, so the record written
        to Redis (twice when it is handed over: the task's hash and the consumer's list, both fsynced in the
        durable modes) and parsed at every claim is a third of the full JSON for a plain task. A reader fills
        the defaults back in, which makes them part of the stored format: changing one changes what every
        task already queued means (`tests/unit/test_task_model.py` pins them)."""
        return self.model_dump_json(exclude_defaults=True)

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority:
        return Priority.parse(value)

    @model_validator(mode="after")
    def _check_payload(self) -> Task:
        try:
            encoded = COMPACT_JSON.encode(self.payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"payload must be JSON-serialisable (dicts, lists, strings, numbers, bools, null): {exc}"
            ) from None
        except RecursionError:  # about a thousand levels (the encoder's recursion): surely no one's intent
            raise ValueError("payload nests too deep for JSON: flatten it") from None
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"payload is {len(encoded)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit: "
                "store large inputs elsewhere (object storage, a volume) and pass a reference"
            )
        return self


def encode_result(result: Any) -> str:
    """A handler's result as the queue stores it (compact JSON), or ValueError naming the bound it breaks:
    JSON only, `MAX_JSON_DEPTH` levels, `MAX_RESULT_BYTES`."""
    deep = too_deep(result, MAX_JSON_DEPTH)
    if deep is not None:
        raise ValueError(
            f"the result nests more than {MAX_JSON_DEPTH} levels deep (at {clip_text(deep, 80)}): flatten it"
        )
    try:
        text = COMPACT_JSON.encode(result)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the result is not JSON: {exc}") from None
    if len(text) > MAX_RESULT_BYTES:  # ASCII: the encoder escapes the rest
        raise ValueError(result_too_large(len(text)))
    return text


def result_too_large(size: int) -> str:
    return (
        f"the result is {size:,} bytes of JSON, over the limit of {MAX_RESULT_BYTES:,}: keep large outputs "
        "in the workspace or object storage and return a reference"
    )


def decode_result(text: str) -> tuple[Any, str | None]:
    """A stored result's value, or (None, why) for one no codeforge agent stores: over `MAX_RESULT_BYTES`, not
    JSON, or nested past `MAX_JSON_DEPTH` (a client that is not codeforge's may store anything; reading it
    must neither fail the reader nor hand the run a value that breaks CEL or the checkpoints)."""
    if not text:
        return None, None
    if len(text) > MAX_RESULT_BYTES:  # characters <= the bytes the scripts bound
        return None, result_too_large(len(text))
    deep = f"the result stored for it nests more than {MAX_JSON_DEPTH} levels deep"
    try:
        value = json.loads(text)
    except ValueError:
        return None, f"the result stored for it is not JSON (it starts {clip(text[:40])})"
    except RecursionError:  # thousands of levels
        return None, deep
    return (None, deep) if too_deep(value, MAX_JSON_DEPTH) is not None else (value, None)


class TaskOutcome(BaseModel):
    """A task's final (or current) record, as `wait_result` and `get` return it."""

    model_config = ConfigDict(frozen=True)

    id: str
    pool: str
    state: TaskState
    result: JSONValue = None
    error: str | None = None
    attempts: int = 0
    consumer: str | None = Field(
        default=None, description="The agent holding the task, or that finished it last."
    )
    finished_at: float | None = Field(
        default=None, description="Unix time (the queue's clock) the task ended; None while it runs."
    )
    run_seconds: float | None = Field(
        default=None,
        description="Claim -> end of the delivery that ended it (an agent's busy time on it); None when it "
        "ended unclaimed (cancelled while queued).",
    )
    notified: bool = Field(
        default=False,
        exclude=True,
        description="Delivered to a waiter by the queue's completion notification (the waiter was woken), "
        "not read from a task that had ended before the wait began. How it arrived, not part of the record: "
        "left out of comparisons and serialisation.",
    )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskOutcome):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:  # consistent with __eq__ (results may be unhashable dicts)
        return hash((self.id, self.pool, self.state, self.attempts))


class DeadLetter(TaskOutcome):
    """A task in the dead-letter queue: its outcome, the task as it was enqueued, and when it died."""

    task: Task | None = Field(default=None, description="The task as enqueued (None if its record is torn).")
    died_at: float = Field(default=0.0, description="Unix time it entered the dead-letter queue.")
    failures: int = Field(default=0, description="Retryable handler failures spent (max_attempts budget).")
    lost_leases: int = Field(default=0, description="Lost leases spent (max_lost_leases budget).")


class QueueStats(BaseModel):
    """Per-pool figures that drive autoscaling and metrics; each is an O(1) / O(log n) read."""

    model_config = ConfigDict(frozen=True)

    pool: str
    queued: int = Field(
        description="Ready to claim now: what agents can run (the autoscaler scales on it). Tasks whose "
        "fair-share key is at its maxConcurrency are in `held_back` instead."
    )
    delayed: int = Field(description="Waiting for a retry backoff to pass.")
    in_flight: int = Field(description="Claimed, under a lease.")
    dead: int = Field(description="In the dead-letter queue.")
    oldest_age_seconds: float = Field(
        description="How long the oldest ready task has waited since it last became ready (enqueue, retry "
        "due, hand-back), 0 when none waits."
    )
    dead_expired: int = Field(
        default=0, description="Dead letters removed so far because they outlived the retention."
    )
    held_back: int = Field(
        default=0,
        description="Ready, but their fair-share key holds its maxConcurrency leases: claimable only as "
        "those end, so more agents would not run them sooner.",
    )
