"""The Workflow spec: a graph of steps, each run by an AgentPool. Also the Workflow custom resource's `spec`.

Field names are camelCase in YAML (`timeoutSeconds`, `forEach`) like every Kubernetes API, and only that
spelling is accepted from a manifest; Python code uses snake_case attributes. Validation covers what a graph
needs to run: step names, reachability, a way out of every cycle, and CEL expressions that pass
`codeforge.api.cel_check`. Every string, list and map is bounded (`codeforge.api.limits`). Numbers and
booleans are `strict=True`, typed as the CRD's `type: integer|number|boolean` type them: `true` is no 1 and
"3" no 3 (an integer field takes no float; a number field takes an integer). Each error names the field
(`spec.edges[2].when`) and the fix, and repeats at most a short prefix of a bad value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

import cel
from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from codeforge.api import limits
from codeforge.api.cel_check import CelCheckError, check_program, check_size, compile_error
from codeforge.api.limits import MAX_PARAMS_KEYS, clip, clip_text
from codeforge.api.spec_model import SpecModel
from codeforge.api.task import COMPACT_JSON, Priority, validate_pool_name
from codeforge.api.usage import Budget
from codeforge.api.workspace import StepWorkspace, WorkspaceSpec

KIND: Final = "Workflow"
PLURAL: Final = "workflows"
#: Free JSON (any type): the CRD schema keeps whatever the user writes there.
FreeJSON = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]
#: Free JSON object (a step's params): the number of keys bounded in the schema, the size in the model.
FreeObject = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "maxProperties": MAX_PARAMS_KEYS}
    ),
]
#: A priority by name (CRITICAL, HIGH, MEDIUM, LOW, any case) or number (1-4) in manifests.
PriorityField = Annotated[
    Priority,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "maxLength": 16,
            "description": "CRITICAL, HIGH, MEDIUM or LOW (or 1-4; 1 runs first).",
        }
    ),
]
#: A CEL expression (bounded before it reaches the compiler, see `codeforge.api.cel_check`).
CelText = Annotated[str, StringConstraints(max_length=limits.MAX_CEL_LENGTH)]
#: The variables each kind of expression sees (`codeforge.orchestrator.compiler` provides them).
WHEN_VARIABLES: Final = frozenset({"state", "input", "result", "step"})
INPUT_VARIABLES: Final = frozenset({"state", "input", "item", "index"})
FOR_EACH_VARIABLES: Final = frozenset({"state", "input", "result", "step"})
CONCURRENCY_KEY_VARIABLES: Final = frozenset({"workflow", "input"})
#: The pseudo-step an edge names to end the workflow.
END: Final = "END"
STEP_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
NAMESPACE_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OBJECT_NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RESERVED: Final = frozenset({"end", "start", "__start__", "__end__"})


_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
#: Problems listed per error (the rest are counted), and the longest line: errors stay readable and small.
MAX_PROBLEMS: Final = 20
MAX_LINE: Final = 400


class WorkflowSpecError(ValueError):
    """A Workflow spec is invalid; `problems` lists `(field path, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{path}: {msg}" for path, msg in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        super().__init__("\n".join(lines))


class JoinPolicy(enum.StrEnum):
    """How the results of a fan-out are merged into the step's result."""

    ALL = "all"  # every part must succeed; result = list of part results in index order
    FIRST_SUCCESS = "firstSuccess"  # the first part to succeed wins; the others are cancelled
    MAJORITY = "majority"  # parts vote with result[voteField]; a strict majority of all parts wins


@lru_cache(maxsize=1024)
def compile_cel(expression: str) -> cel.Program:
    """Compile a CEL expression once (compiling costs far more than the ~40 us evaluation). The size check
    runs first, always: the compiler crashes the process on a very long expression."""
    check_size(expression)
    return cel.compile(expression)


def _check_cel(expression: str | None, variables: frozenset[str], what: str) -> str | None:
    if expression is None:
        return None
    if not expression.strip():
        raise ValueError("CEL expression is empty: write one, e.g. 'result.type == \"research_needed\"'")
    tokens = check_size(expression)
    try:
        program = compile_cel(expression)
    except CelCheckError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"CEL expression does not compile: {compile_error(exc)}") from None
    check_program(program, tokens, variables, what)
    return expression


def check_input(value: Any, what: str = "input") -> Any:
    """A Workflow's input: JSON of at most `MAX_INPUT_BYTES`, nested at most `MAX_JSON_DEPTH` deep."""
    return _check_json(value, what, limits.MAX_INPUT_BYTES)


def _check_json(value: Any, what: str, max_bytes: int) -> Any:
    """A free JSON value: bounded depth (checked first, without recursion) and encoded size."""
    if limits.too_deep(value, limits.MAX_JSON_DEPTH) is not None:
        raise ValueError(f"{what} nests more than {limits.MAX_JSON_DEPTH} levels deep: flatten it")
    try:
        size = len(COMPACT_JSON.encode(value))  # ASCII: the encoder escapes the rest, so chars are bytes
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be JSON (objects, lists, strings, numbers, booleans, null)") from None
    if size > max_bytes:
        raise ValueError(
            f"{what} is {size} bytes of JSON, over the limit of {max_bytes}: store large data elsewhere "
            "(object storage, a volume) and pass a reference"
        )
    return value


class Shutdown(enum.StrEnum):
    """`spec.shutdown`: end a run early, as `argo stop` / `argo terminate` do (`codeforge stop`)."""

    STOP = "Stop"  # nothing new is dispatched, unclaimed tasks withdrawn, running ones end (reason Stopped)
    TERMINATE = "Terminate"  # running tasks are cancelled now; the run ends (reason Terminated)


class StepKind(enum.StrEnum):
    """What a step does."""

    TASK = "task"  # a task (or N) in its pool's queue, run by an agent
    APPROVAL = "approval"  # waits for a human decision (`codeforge approve|reject`); no agent, no queue


class RetryPolicy(SpecModel):
    """Retries of a step after its task failed: `max` extra attempts, waiting backoff * multiplier^n."""

    max: int = Field(
        default=0, ge=0, le=100, strict=True, description="Extra attempts after the first failure."
    )
    backoff_seconds: float = Field(
        default=1.0, ge=0, le=3600, strict=True, description="Wait before the first retry."
    )
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10, strict=True)
    max_backoff_seconds: float = Field(default=300.0, ge=0, le=86400, strict=True)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        return float(
            min(self.backoff_seconds * self.backoff_multiplier ** (retry - 1), self.max_backoff_seconds)
        )


class FairShare(SpecModel):
    """`spec.fairShare`: how the Workflow's tasks share their pools with other Workflows' (README, "Fair
    share"). Within one pool and priority the keys take turns, FIFO within a key."""

    concurrency_key: CelText | None = Field(
        default=None,
        description="CEL over `workflow` ({name, namespace, uid, labels}) and `input` giving the key the "
        "Workflow's tasks share turns and maxConcurrency by, e.g. workflow.labels.team or input.repository "
        f"(a string of at most {limits.MAX_FAIR_KEY} characters; it is scoped to the namespace). "
        "Default: the Workflow itself.",
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=limits.MAX_FAIR_WEIGHT,
        strict=True,
        description="Turns per round against weight-1 keys (the key's latest task sets it).",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=limits.MAX_CONCURRENCY,
        strict=True,
        description="At most this many tasks of the key run at once in each pool (default: no cap).",
    )

    @field_validator("concurrency_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return _check_cel(value, CONCURRENCY_KEY_VARIABLES, "key")


class Step(SpecModel):
    """One node of the graph: a task (or N parallel tasks) in one AgentPool's queue."""

    name: str = Field(
        max_length=limits.MAX_NAME,
        description="Unique within the workflow: lowercase letters, digits and '-'.",
    )
    kind: StepKind = Field(
        default=StepKind.TASK,
        description="task (run by an agent of `pool`) or approval (waits for `codeforge approve|reject`, "
        "holding no agent; its result is {approved, decision, by, at, message}; a rejection fails the step, "
        "so only an edge such as `when: '!result.approved'` routes it).",
    )
    pool: str = Field(
        default="",
        max_length=limits.MAX_POOL_NAME,
        description="The AgentPool whose agents run this step (task steps; approval steps have none).",
    )
    message: str | None = Field(
        default=None,
        max_length=limits.MAX_APPROVAL_MESSAGE,
        description="Approval steps: what the approver is asked (shown by `codeforge get`, in the status).",
    )
    input: CelText | None = Field(
        default=None,
        description="CEL over `state` selecting what the task receives (default: the whole state, "
        "i.e. `state.input` and `state.results`).",
    )
    params: FreeObject = Field(
        default_factory=dict,
        max_length=limits.MAX_PARAMS_KEYS,
        description="Static parameters for the pool's handler, merged into the payload "
        f"(at most {limits.MAX_PARAMS_BYTES} bytes of JSON).",
    )
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=7 * 86400,
        strict=True,
        description="Per attempt; for an approval step, how long it waits for a decision (then it fails).",
    )
    parallel: int | None = Field(default=None, ge=1, le=1000, strict=True, description="Fan out to N agents.")
    for_each: CelText | None = Field(
        default=None, description="CEL over `state` giving a list: one task per item."
    )
    join: JoinPolicy = Field(default=JoinPolicy.ALL, description="How fan-out results are merged.")
    vote_field: str = Field(
        default="choice",
        min_length=1,
        max_length=limits.MAX_OBJECT_NAME,
        description="The result field a majority join counts.",
    )
    priority: PriorityField | None = Field(default=None, description="Overrides the workflow's priority.")
    workspace: StepWorkspace | None = Field(default=None, description="Workspace options (spec.workspace).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not STEP_NAME_RE.match(value):
            raise ValueError(
                f"step name {clip(value)} is invalid: use 1-63 lowercase letters, digits and '-', "
                "starting with a letter"
            )
        if value.lower() in _RESERVED:
            raise ValueError(
                f"step name {clip(value)} is reserved: pick another name ('END' ends the workflow)"
            )
        return value

    @field_validator("pool")
    @classmethod
    def _check_pool(cls, value: str) -> str:
        return validate_pool_name(value) if value else value

    # A key of the parts' results, repeated in the status and the step's failure message: no control
    # characters (terminal sequences, newlines in logs), no padding that no handler writes.
    @field_validator("vote_field")
    @classmethod
    def _check_vote_field(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError(
                f"{clip(value)} is not a result field name: use printable characters without leading or "
                "trailing spaces, e.g. choice"
            )
        return value

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | None) -> str | None:
        return _check_cel(value, INPUT_VARIABLES, "value")

    @field_validator("for_each")
    @classmethod
    def _check_for_each(cls, value: str | None) -> str | None:
        return _check_cel(value, FOR_EACH_VARIABLES, "list")

    @field_validator("params")
    @classmethod
    def _check_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_json(value, "params", limits.MAX_PARAMS_BYTES)  # type: ignore[no-any-return]

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority | None:
        return None if value is None else Priority.parse(value)

    @model_validator(mode="after")
    def _check_kind(self) -> Step:
        if self.kind is StepKind.TASK:
            if not self.pool:
                raise ValueError("pool: a task step needs the AgentPool that runs it: set `pool`")
            if self.message is not None:
                raise ValueError("message is for approval steps (`kind: approval`): remove it")
            return self
        extra = [
            name
            for name, unset in (
                ("pool", not self.pool),
                ("input", self.input is None),
                ("params", not self.params),
                ("parallel", self.parallel is None),
                ("forEach", self.for_each is None),
                ("priority", self.priority is None),
                ("workspace", self.workspace is None),
                ("retries", self.retries == RetryPolicy()),
            )
            if not unset
        ]
        if extra:
            raise ValueError(
                f"an approval step waits for a person, not an agent: remove {', '.join(extra)} "
                "(it takes `message` and `timeoutSeconds`)"
            )
        return self

    @property
    def is_approval(self) -> bool:
        return self.kind is StepKind.APPROVAL

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


class Edge(SpecModel):
    """A transition. Edges leaving a step are tried in order: the first whose `when` holds is taken; an edge
    without `when` is the default branch, taken when none matched (and only if the step succeeded)."""

    from_: str = Field(alias="from", max_length=limits.MAX_NAME, description="The step the edge leaves.")
    to: str = Field(
        max_length=limits.MAX_NAME, description=f"The next step, or {END!r} to finish the workflow."
    )
    when: CelText | None = Field(
        default=None,
        description="CEL condition over `state`, `result` (the step's result) and `step` "
        '(name, status, error, attempts), e.g. result.type == "research_needed".',
    )

    @field_validator("when")
    @classmethod
    def _check_when(cls, value: str | None) -> str | None:
        return _check_cel(value, WHEN_VARIABLES, "bool")


class WorkflowSpec(SpecModel):
    """The Workflow custom resource's `spec`."""

    input: FreeJSON = Field(
        default=None,
        description="Free JSON: the workflow's input, `state.input` in CEL "
        f"(at most {limits.MAX_INPUT_BYTES} bytes of JSON, like a task's payload). Per-run values belong "
        "here, not in steps' params: Workflows that differ only in input, priority, budget and the like "
        "share one compiled graph.",
    )
    priority: PriorityField = Field(default=Priority.MEDIUM, description="Priority of the workflow's tasks.")
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=30 * 86400, strict=True, description="Whole workflow."
    )
    suspend: bool = Field(
        default=False, strict=True, description="Pause dispatching new tasks; running ones finish."
    )
    shutdown: Shutdown | None = Field(
        default=None,
        description="End the run early: Stop (nothing new is dispatched, queued tasks no agent took are "
        "withdrawn, running tasks finish) or Terminate (running tasks are cancelled). The Workflow ends "
        "Cancelled, reason Stopped or Terminated. Once set it can only go from Stop to Terminate.",
    )
    max_tasks_in_flight: int = Field(
        default=100, ge=1, le=10000, strict=True, description="Tasks dispatched at once."
    )
    max_step_runs: int = Field(
        default=100,
        ge=1,
        le=10000,
        strict=True,
        description="Bound on step executions, so a loop always ends.",
    )
    entry: str | None = Field(
        default=None, max_length=limits.MAX_NAME, description="First step (default: the first in `steps`)."
    )
    steps: list[Step] = Field(
        min_length=1, max_length=limits.MAX_STEPS, description="The steps; names are unique."
    )
    edges: list[Edge] = Field(
        default_factory=list,
        max_length=limits.MAX_EDGES,
        description="Transitions; a step with none ends the run.",
    )

    workspace: WorkspaceSpec | None = Field(
        default=None, description="The Git repository the steps work on (each task gets its own checkout)."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=limits.MAX_TTL_SECONDS,
        strict=True,
        description="Seconds after the run finished when its checkpoints, result copy and step refs are "
        "removed (default: the operator's CODEFORGE_WORKFLOW_TTL_SECONDS; unset there too: kept).",
    )
    ttl_deletes_workflow: bool = Field(
        default=False,
        strict=True,
        description="When the TTL passes, delete the Workflow object as well (like a Job's TTL).",
    )
    budget: Budget | None = Field(
        default=None,
        description="Tokens and cost the Workflow's tasks may use (as handlers report); reaching either "
        "stops dispatching and fails or suspends the Workflow (reason BudgetExceeded).",
    )
    fair_share: FairShare = Field(
        default_factory=FairShare,
        description="How the tasks share pools with other Workflows: key, weight, maxConcurrency.",
    )

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        return check_input(value)

    @field_validator("priority", mode="before")
    @classmethod
    def _parse_priority(cls, value: object) -> Priority:
        return Priority.parse(value)

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowSpec:
        problems = check_graph(self)
        if self.workspace is not None and not self.task_pools:
            problems.append(("spec.workspace", "a workspace needs a task step (its agents do the Git work)"))
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

    @property
    def task_pools(self) -> list[str]:
        """The pools the task steps name, in step order, each once (approval steps name none)."""
        return list(dict.fromkeys(s.pool for s in self.steps if s.pool))

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
    known = _listing(sorted(names))
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
                f"the workflow can never finish from steps {_listing(trapped)}: they lead into a cycle with "
                f"no way out; add an edge to {END!r} or a `when` condition that leaves the loop",
            )
        )
    return problems


def _listing(names: list[str], shown: int = 8) -> str:
    if not names:
        return "(none)"
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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


MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_KEY_LENGTH)]
LabelValue = Annotated[str, StringConstraints(max_length=limits.MAX_LABEL_VALUE)]
AnnotationValue = Annotated[str, StringConstraints(max_length=limits.MAX_ANNOTATION_VALUE)]


class ObjectMeta(SpecModel):
    """The part of Kubernetes metadata a Workflow run needs (the rest of a real object's metadata, such as
    resourceVersion or managedFields, is kept as it is: it only comes from the API server)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=limits.MAX_OBJECT_NAME)
    namespace: str = Field(default="default", min_length=1, max_length=limits.MAX_NAME)
    uid: str | None = Field(default=None, max_length=128)
    labels: dict[MetaKey, LabelValue] = Field(default_factory=dict, max_length=limits.MAX_MAP_KEYS)
    annotations: dict[MetaKey, AnnotationValue] = Field(default_factory=dict, max_length=limits.MAX_MAP_KEYS)

    # The API server's rules (a DNS subdomain, a DNS label), so `codeforge run` refuses what `kubectl apply`
    # would, and no name carries control characters or a path into logs, terminals or Redis keys.
    @field_validator("name", "namespace")
    @classmethod
    def _check_names(cls, value: str, info: ValidationInfo) -> str:
        namespace = info.field_name == "namespace"
        if not (NAMESPACE_RE if namespace else OBJECT_NAME_RE).match(value):
            what, allowed = ("a namespace", "'-'") if namespace else ("a Kubernetes object", "'-' and '.'")
            raise ValueError(
                f"{clip(value)} is not {what} name: use lowercase letters, digits and {allowed}, "
                "starting and ending with a letter or digit"
            )
        return value


class WorkflowManifest(SpecModel):
    """A whole Workflow document, as in `kubectl apply -f workflow.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    api_version: Literal["codeforge.ai/v1alpha1"] = Field(default="codeforge.ai/v1alpha1", alias="apiVersion")
    kind: Literal["Workflow"] = "Workflow"
    metadata: ObjectMeta
    spec: WorkflowSpec
    status: FreeJSON = Field(default=None, exclude=True, description="Ignored (written by the operator).")

    @classmethod
    def parse(cls, data: Any) -> WorkflowManifest:
        """Validate a document as written in a file: camelCase field names only."""
        _check_depth(data, "")
        return cls.model_validate(data, by_alias=True, by_name=False)


def format_validation_error(exc: ValidationError | WorkflowSpecError, prefix: str = "spec") -> str:
    """One line per problem, `field.path: message`, with camelCase paths as written in the YAML."""
    if isinstance(exc, WorkflowSpecError):
        return str(exc)
    lines: list[str] = []
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_PROBLEMS]:
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, WorkflowSpecError):
            lines.extend(f"{prefix}{path.removeprefix('spec')}: {msg}" for path, msg in ctx_error.problems)
            continue
        loc = err["loc"]
        # A key that is no string (YAML `1:`, `null:`): pydantic's loc holds str(key) or an int, which reads
        # as `.None` or a list index; the error's input is the key itself.
        bad_key = err["type"] == "invalid_key" or loc[-1:] == ("[key]",)
        if loc[-1:] == ("[key]",):
            loc = loc[:-1]
        path = prefix
        for i, part in enumerate(loc):
            # A field name is user input too (an unknown key may be a megabyte long).
            if bad_key and i == len(loc) - 1:
                path += f"[{limits.yaml_scalar(err['input'])}]"
            elif isinstance(part, int):
                path += f"[{part}]"
            else:
                path += key_in_path(str(part))
        message = str(err["msg"]).removeprefix("Value error, ")
        if bad_key:
            key = limits.yaml_scalar(err["input"])
            quoted = f' ("{key}": ...)' if _YAML_SCALAR.fullmatch(key) else ""
            message = (
                f"the key {key} is not a field name: remove it or check its spelling"
                if err["type"] == "invalid_key"
                else f"keys must be strings: quote this one{quoted}"
            )
        elif err["type"] == "extra_forbidden" and err["loc"]:
            message += _spelling_hint(str(err["loc"][-1]))
        elif err["type"] in _TYPE_HINTS:
            message += _TYPE_HINTS[err["type"]]
        lines.append(clip_text(f"{path}: {message}", MAX_LINE))
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"{prefix}: ... and {len(errors) - MAX_PROBLEMS} more problems")
    return "\n".join(lines)


#: The fix for a value of the wrong type (numbers and booleans are strict, as in the CRD: a quoted "3" or
#: "true" is a string).
_TYPE_HINTS: Final = {
    "int_type": ": write a whole number without quotes, e.g. 3",
    "float_type": ": write a number without quotes, e.g. 1.5",
    "bool_type": ": write true or false without quotes",
}


#: A key YAML reads as no string but that quoted would be one: null, true, false, a short number.
_YAML_SCALAR: Final = re.compile(r"null|true|false|[-+.\w]{1,40}")


def key_in_path(key: str) -> str:
    """`.name` for a plain key; odd characters (spaces, emoji, ': ') are quoted and clipped, so a field
    path stays one short token whatever key a user wrote."""
    if _PLAIN_KEY.fullmatch(key) and len(key) <= 64:
        return f".{key}"
    return f"[{clip(key, 40)}]"


def unknown_field_hint(key: str) -> str:
    """Why a key is refused, with the camelCase spelling when the key is a snake_case one."""
    return _spelling_hint(key)


def _spelling_hint(key: str) -> str:
    if "_" in key and len(key) <= 64 and to_camel(key) != key:
        return f": fields are camelCase, write {to_camel(key)!r}"
    return ": remove it or check its spelling"


def parse_workflow_spec(data: Any, prefix: str = "spec") -> WorkflowSpec:
    """Validate a spec, raising WorkflowSpecError whose lines name each bad field. Only the camelCase
    spelling of a field is accepted, as the CRD's schema accepts only that one."""
    _check_depth(data, prefix)
    try:
        return WorkflowSpec.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise WorkflowSpecError(_as_problems(exc, prefix)) from None


def _check_depth(data: Any, prefix: str) -> None:
    deep = limits.too_deep(data, limits.MAX_DOCUMENT_DEPTH)
    if deep is not None:
        where = f"{prefix}{deep}" if prefix else deep.lstrip(".") or "document"
        # The path holds the keys as written: escape control characters (no terminal sequences).
        where = clip_text(limits.printable(where[:400]), 200)
        message = f"nests more than {limits.MAX_DOCUMENT_DEPTH} levels deep: a Workflow is far shallower"
        raise WorkflowSpecError([(where, message)])


def _as_problems(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for line in format_validation_error(exc, prefix).splitlines():
        path, _, msg = line.partition(": ")
        problems.append((path, msg))
    return problems
