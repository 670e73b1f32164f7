"""The Workflow spec: a graph of steps, each run by an AgentPool. Also the Workflow custom resource's `spec`.

Field names are camelCase in YAML (`timeoutSeconds`, `forEach`) like every Kubernetes API; Python code uses
snake_case attributes. Validation covers what a graph needs to run: step names, reachability, a way out of
every cycle, and CEL expressions that compile. Each error names the field (`spec.edges[2].when`) and the fix.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

import cel
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from codeforge.api.task import Priority, validate_pool_name

KIND: Final = "Workflow"
PLURAL: Final = "workflows"
#: Free JSON (any type): the CRD schema keeps whatever the user writes there.
FreeJSON = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
FreeObject = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]
#: A priority by name (CRITICAL, HIGH, MEDIUM, LOW, any case) or number (1-4) in manifests.
PriorityField = Annotated[
    Priority,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "description": "CRITICAL, HIGH, MEDIUM or LOW (or 1-4; 1 runs first).",
        }
    ),
]
#: The pseudo-step an edge names to end the workflow.
END: Final = "END"
STEP_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_RESERVED: Final = frozenset({"end", "start", "__start__", "__end__"})


class WorkflowSpecError(ValueError):
    """A Workflow spec is invalid; `problems` lists `(field path, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {msg}" for path, msg in problems))


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, use_enum_values=False
    )


class JoinPolicy(enum.StrEnum):
    """How the results of a fan-out are merged into the step's result."""

    ALL = "all"  # every part must succeed; result = list of part results in index order
    FIRST_SUCCESS = "firstSuccess"  # the first part to succeed wins; the others are cancelled
    MAJORITY = "majority"  # parts vote with result[voteField]; a strict majority of all parts wins


@lru_cache(maxsize=1024)
def compile_cel(expression: str) -> cel.Program:
    """Compile a CEL expression once (compiling costs far more than the ~40 us evaluation)."""
    return cel.compile(expression)


def _check_cel(expression: str | None) -> str | None:
    if expression is None:
        return None
    if not expression.strip():
        raise ValueError("CEL expression is empty: write one, e.g. 'result.type == \"research_needed\"'")
    try:
        compile_cel(expression)
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).split("\n", 1)[0]
        raise ValueError(f"CEL expression does not compile: {detail}") from None
    return expression


# -- workspaces (issue #11): the repository a Workflow's steps work on, passed step to step through Git ----

#: The placeholder in `pushBranch` replaced by the Workflow's name.
WORKFLOW_PLACEHOLDER: Final = "{{workflow}}"
DEFAULT_PUSH_BRANCH: Final = f"codeforge/{WORKFLOW_PLACEHOLDER}"
GIT_URL_SCHEMES: Final = ("https", "http", "ssh", "git", "file")
_URL_RE: Final = re.compile(r"^(?P<scheme>[a-z+]+)://(?P<authority>[^/?#]*)(?P<rest>.*)$")
#: What `git check-ref-format` refuses, in short: no `..`, `@{`, control characters, space, ~^:?*[\\,
#: no component starting with `.` or ending with `.lock`, no leading/trailing `/` or trailing `.`.
_BAD_REF_RE: Final = re.compile(r"\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|(^|/)\.|\.lock(/|$)|^/|/$|\.$|^@$")


def check_git_url(url: str) -> str:
    """A Git URL with a supported scheme and no credentials in it (they belong in a Secret)."""
    match = _URL_RE.match(url.strip())
    if match is None or match["scheme"] not in GIT_URL_SCHEMES:
        raise ValueError(
            f"Git URL {redact_url(url)!r} is not supported: use one of "
            f"{', '.join(s + '://' for s in GIT_URL_SCHEMES)} (e.g. https://git.example.com/team/repo.git)"
        )
    userinfo, at, _ = match["authority"].rpartition("@")
    if at and (":" in userinfo or match["scheme"] in ("https", "http")):
        raise ValueError(
            f"Git URL {redact_url(url)!r} carries credentials: remove them from the URL and put them in a "
            "Secret named by the AgentPool's spec.workspace.credentialsSecret"
        )
    return url.strip()


def redact_url(url: str) -> str:
    """The URL with any user:password@ replaced, for messages."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


def check_ref_name(value: str, what: str) -> str:
    if not value or _BAD_REF_RE.search(value):
        raise ValueError(
            f"{what} {value!r} is not a valid Git ref name: no spaces, '..', '~^:?*[\\', '@{{', "
            "no part starting with '.' or ending in '.lock'"
        )
    return value


class GitSource(_Model):
    """The repository a Workflow works on."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="https://, http://, ssh://, git:// or file:// URL, without credentials (those come from "
        "the AgentPools' spec.workspace.credentialsSecret).",
    )
    ref: str = Field(
        default="HEAD",
        min_length=1,
        max_length=255,
        description="Branch, tag or commit the run starts from; resolved to a commit once, when the run "
        "starts (default: the repository's default branch).",
    )
    push_branch: str = Field(
        default=DEFAULT_PUSH_BRANCH,
        min_length=1,
        max_length=255,
        description=f"The branch the final commit is pushed to when the run succeeds; {WORKFLOW_PLACEHOLDER} "
        "is replaced by the Workflow's name.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_git_url(value)

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str) -> str:
        if value != "HEAD":
            check_ref_name(value.removeprefix("refs/"), "ref")
        return value

    @field_validator("push_branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        name = value.removeprefix("refs/heads/")
        check_ref_name(name.replace(WORKFLOW_PLACEHOLDER, "w"), "pushBranch")
        return name

    def branch_for(self, workflow: str) -> str:
        """The push branch with the Workflow's name filled in (a full ref, refs/heads/...)."""
        return "refs/heads/" + self.push_branch.replace(WORKFLOW_PLACEHOLDER, safe_ref_part(workflow))


def safe_ref_part(value: str) -> str:
    """`value` made usable inside a ref name (a Workflow name or run id): other characters become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._/-]", "-", value).strip("/")
    parts = [p.lstrip(".").removesuffix(".lock").rstrip(".") or "-" for p in cleaned.split("/") if p]
    return "/".join(parts) or "-"


class WorkspaceSpec(_Model):
    """`spec.workspace`: the code the Workflow's steps work on, handed from step to step through Git."""

    git: GitSource


class StepWorkspace(_Model):
    """A step's workspace options."""

    merge: bool = Field(
        default=False,
        description="For a fan-out joined with `all`: merge the parts' commits into the step's output "
        "(the step fails, naming the files, when they conflict). Default: the step passes its input on.",
    )


class RetryPolicy(_Model):
    """Retries of a step after its task failed: `max` extra attempts, waiting backoff * multiplier^n."""

    max: int = Field(default=0, ge=0, le=100, description="Extra attempts after the first failure.")
    backoff_seconds: float = Field(default=1.0, ge=0, le=3600, description="Wait before the first retry.")
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)
    max_backoff_seconds: float = Field(default=300.0, ge=0, le=86400)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return float(
            min(self.backoff_seconds * self.backoff_multiplier ** (retry - 1), self.max_backoff_seconds)
        )


class Step(_Model):
    """One node of the graph: a task (or N parallel tasks) in one AgentPool's queue."""

    name: str = Field(description="Unique within the workflow: lowercase letters, digits and '-'.")
    pool: str = Field(description="The AgentPool whose agents run this step.")
    input: str | None = Field(
        default=None,
        description="CEL over `state` selecting what the task receives (default: the whole state, "
        "i.e. `state.input` and `state.results`).",
    )
    params: FreeObject = Field(
        default_factory=dict, description="Static parameters for the pool's handler, merged into the payload."
    )
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(default=None, gt=0, le=7 * 86400, description="Per attempt.")
    parallel: int | None = Field(default=None, ge=1, le=1000, description="Fan out to N agents.")
    for_each: str | None = Field(
        default=None, description="CEL over `state` giving a list: one task per item."
    )
    join: JoinPolicy = Field(default=JoinPolicy.ALL, description="How fan-out results are merged.")
    vote_field: str = Field(
        default="choice", min_length=1, description="The result field a majority join counts."
    )
    priority: PriorityField | None = Field(default=None, description="Overrides the workflow's priority.")
    workspace: StepWorkspace | None = Field(default=None, description="Workspace options (spec.workspace).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not STEP_NAME_RE.match(value):
            raise ValueError(
                f"step name {value!r} is invalid: use 1-63 lowercase letters, digits and '-', "
                "starting with a letter"
            )
        if value.lower() in _RESERVED:
            raise ValueError(f"step name {value!r} is reserved: pick another name ('END' ends the workflow)")
        return value

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: str) -> str:
        return validate_pool_name(value)

    @field_validator("input", "for_each")
    @classmethod
    def _check_expr(cls, value: str | None) -> str | None:
        return _check_cel(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority | None:
        return None if value is None else Priority.parse(value)

    @model_validator(mode="after")
    def _check_fanout(self) -> Step:
        if self.parallel is not None and self.for_each is not None:
            raise ValueError("set either `parallel` (N copies) or `forEach` (one task per item), not both")
        if self.join is JoinPolicy.MAJORITY and self.parallel is None and self.for_each is None:
            raise ValueError("join: majority needs a fan-out: set `parallel` (e.g. 3) or `forEach`")
        if self.merges and (not self.fans_out or self.join is not JoinPolicy.ALL):
            raise ValueError(
                "workspace.merge merges the parts of a fan-out joined with `all`: set `parallel` or "
                "`forEach` and `join: all`, or drop workspace.merge"
            )
        return self

    @property
    def merges(self) -> bool:
        return self.workspace is not None and self.workspace.merge

    @property
    def fans_out(self) -> bool:
        return self.parallel is not None or self.for_each is not None


class Edge(_Model):
    """A transition. Edges leaving a step are tried in order: the first whose `when` holds is taken; an edge
    without `when` is the default branch, taken when none matched (and only if the step succeeded)."""

    from_: str = Field(alias="from", description="The step the edge leaves.")
    to: str = Field(description=f"The next step, or {END!r} to finish the workflow.")
    when: str | None = Field(
        default=None,
        description="CEL condition over `state`, `result` (the step's result) and `step` "
        '(name, status, error, attempts), e.g. result.type == "research_needed".',
    )

    @field_validator("when")
    @classmethod
    def _check_when(cls, value: str | None) -> str | None:
        return _check_cel(value)


class WorkflowSpec(_Model):
    """The Workflow custom resource's `spec`."""

    input: FreeJSON = Field(
        default=None, description="Free JSON: the workflow's input, `state.input` in CEL."
    )
    priority: PriorityField = Field(default=Priority.MEDIUM, description="Priority of the workflow's tasks.")
    timeout_seconds: float | None = Field(default=None, gt=0, le=30 * 86400, description="Whole workflow.")
    suspend: bool = Field(default=False, description="Pause dispatching new tasks; running ones finish.")
    max_tasks_in_flight: int = Field(default=100, ge=1, le=10000, description="Tasks dispatched at once.")
    max_step_runs: int = Field(
        default=100, ge=1, le=10000, description="Bound on step executions, so a loop always ends."
    )
    entry: str | None = Field(default=None, description="First step (default: the first in `steps`).")
    steps: list[Step] = Field(min_length=1, description="The steps; names are unique.")
    edges: list[Edge] = Field(default_factory=list, description="Transitions; a step with none ends the run.")
    workspace: WorkspaceSpec | None = Field(
        default=None, description="The Git repository the steps work on (each task gets its own checkout)."
    )

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority:
        return Priority.parse(value)

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowSpec:
        problems = check_graph(self)
        if self.workspace is None:
            problems += [
                (f"spec.steps[{i}].workspace.merge", "merging needs a repository: set spec.workspace.git")
                for i, step in enumerate(self.steps)
                if step.merges
            ]
        if problems:
            raise WorkflowSpecError(problems)
        return self

    @property
    def entry_step(self) -> str:
        return self.entry or self.steps[0].name

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def edges_from(self, name: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.from_ == name]


def check_graph(spec: WorkflowSpec) -> list[tuple[str, str]]:
    """Problems with the graph as a whole, each as (field path, message)."""
    problems: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    for i, step in enumerate(spec.steps):
        if step.name in names:
            problems.append(
                (f"spec.steps[{i}].name", f"duplicate step name {step.name!r}: names must be unique")
            )
        names.setdefault(step.name, i)
    known = ", ".join(sorted(names)) or "(none)"
    if spec.entry is not None and spec.entry not in names:
        problems.append(("spec.entry", f"unknown step {spec.entry!r}: use one of {known}"))
    defaults: dict[str, int] = {}
    for i, edge in enumerate(spec.edges):
        if edge.from_ not in names:
            problems.append((f"spec.edges[{i}].from", f"unknown step {edge.from_!r}: use one of {known}"))
        if edge.to != END and edge.to not in names:
            problems.append(
                (f"spec.edges[{i}].to", f"unknown step {edge.to!r}: use one of {known} or {END!r}")
            )
        if edge.when is None:
            if edge.from_ in defaults:
                problems.append(
                    (
                        f"spec.edges[{i}]",
                        f"step {edge.from_!r} already has a default edge "
                        f"(spec.edges[{defaults[edge.from_]}]): give one of them a `when` condition",
                    )
                )
            defaults.setdefault(edge.from_, i)
    if problems:
        return problems  # reachability is meaningless with dangling names

    successors: dict[str, list[str]] = {name: [] for name in names}
    for edge in spec.edges:
        successors[edge.from_].append(edge.to)
    reachable = _walk([spec.entry_step], successors)
    for name, i in names.items():
        if name not in reachable:
            problems.append(
                (
                    f"spec.steps[{i}]",
                    f"step {name!r} is unreachable from the entry step {spec.entry_step!r}: "
                    "add an edge to it",
                )
            )
    # A step can finish the workflow when it has no outgoing edge, no default edge, or an edge to END.
    exits = {n for n, succ in successors.items() if not succ or END in succ or n not in defaults}
    predecessors: dict[str, list[str]] = {name: [] for name in names}
    for edge in spec.edges:
        if edge.to != END:
            predecessors[edge.to].append(edge.from_)
    can_finish = _walk(exits, predecessors)
    trapped = sorted(n for n in reachable if n not in can_finish)
    if trapped:
        problems.append(
            (
                "spec.edges",
                f"the workflow can never finish from steps {', '.join(trapped)}: they lead into a cycle with "
                f"no way out; add an edge to {END!r} or a `when` condition that leaves the loop",
            )
        )
    return problems


def _walk(start: Iterable[str], graph: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [s for s in start if s in graph]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(n for n in graph[node] if n in graph)
    return seen


class ObjectMeta(_Model):
    """The part of Kubernetes metadata a Workflow run needs."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str = "default"
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class WorkflowManifest(_Model):
    """A whole Workflow document, as in `kubectl apply -f workflow.yaml`."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    api_version: str = Field(default="codeforge.ai/v1alpha1", alias="apiVersion")
    kind: Literal["Workflow"] = "Workflow"
    metadata: ObjectMeta
    spec: WorkflowSpec


def format_validation_error(exc: ValidationError | WorkflowSpecError, prefix: str = "spec") -> str:
    """One line per problem, `field.path: message`, with camelCase paths as written in the YAML."""
    if isinstance(exc, WorkflowSpecError):
        return str(exc)
    lines: list[str] = []
    for err in exc.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, WorkflowSpecError):
            lines.extend(f"{prefix}{path.removeprefix('spec')}: {msg}" for path, msg in ctx_error.problems)
            continue
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def parse_workflow_spec(data: Any, prefix: str = "spec") -> WorkflowSpec:
    """Validate a spec, raising WorkflowSpecError whose lines name each bad field."""
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        raise WorkflowSpecError(_as_problems(exc, prefix)) from None


def _as_problems(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for line in format_validation_error(exc, prefix).splitlines():
        path, _, msg = line.partition(": ")
        problems.append((path, msg))
    return problems
