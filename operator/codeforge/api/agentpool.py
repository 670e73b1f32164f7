"""The AgentPool custom resource: a Deployment of `codeforge-agent` pods for one role, scaled from its queue.

The models are the single source of the CRD schema (`codeforge.api.crd` renders them), so every field carries
its description, default and bounds here. Field names are snake_case in Python and camelCase in Kubernetes.
Rules that span fields are CEL rules (`x-kubernetes-validations`), checked by the API server itself, and
mirrored by pydantic validators so `AgentPoolSpec.model_validate` refuses the same manifests. Every string,
list and map a user writes is bounded (`codeforge.api.limits`), in the schema and in the model alike. Numbers
and booleans are `strict=True`, typed as the CRD's `type: integer|number|boolean` type them: `true` is no 1
and "3" no 3 (an integer field takes no float; a number field takes an integer). Quantities and
int-or-string fields (`IntOrString`) take a string or an integer, as in Kubernetes.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from codeforge.api import limits
from codeforge.api.usage import RateLimitSpec

GROUP: Final = "codeforge.ai"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "AgentPool"
PLURAL: Final = "agentpools"

#: Kubernetes quantities ("500m", "2Gi", 4) and int-or-string fields ("25%", 3).
IntOrString = Annotated[
    Annotated[int, Strict()] | Annotated[str, StringConstraints(max_length=64)],  # `true` is no 1
    WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": 64}),
]
#: Opaque Kubernetes structures we pass through untouched (affinity, valueFrom): the API server checks them
#: when it admits the Deployment, so repeating their huge schemas here would only add drift.
OpaqueObject = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "maxProperties": limits.MAX_MAP_KEYS,
        }
    ),
    Field(max_length=limits.MAX_MAP_KEYS),
]
#: Label keys, label values, annotation values and other short strings.
Key = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_KEY_LENGTH)]
LabelValue = Annotated[str, StringConstraints(max_length=limits.MAX_LABEL_VALUE)]
Value = Annotated[str, StringConstraints(max_length=limits.MAX_VALUE_LENGTH)]


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """`json_schema_extra` for CEL validation rules: (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class CamelModel(BaseModel):
    """Base of every CRD model: camelCase in Kubernetes, unknown fields refused, defaults filled in."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as it reads in a manifest (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class HandlerSpec(CamelModel):
    """Which handler the agents run, and its settings.

    Each settings key becomes the agent's `CODEFORGE_<KEY>` variable (`pythonFunction` ->
    `CODEFORGE_PYTHON_FUNCTION`); lists and objects are passed as JSON. codeforge-agent validates them.
    """

    kind: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="Handler kind known to codeforge-agent: echo, sleep, fail, python, command, http, openai",
    )
    settings: OpaqueObject = Field(
        default_factory=dict,
        description="Handler settings, e.g. {pythonFunction: 'my_agents.research:run'} or "
        "{command: ['python3', 'agent.py']}; each key becomes CODEFORGE_<KEY> in the agent.",
    )


class ResourceRequirements(CamelModel):
    requests: dict[Key, IntOrString] = Field(
        default_factory=dict, max_length=16, description="e.g. {cpu: 500m, memory: 1Gi}"
    )
    limits: dict[Key, IntOrString] = Field(
        default_factory=dict, max_length=16, description="e.g. {memory: 2Gi}"
    )


class EnvVar(CamelModel):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("!(has(self.value) && has(self.valueFrom))", "set either value or valueFrom, not both")
        )
    )

    name: str = Field(min_length=1, max_length=253)
    value: str | None = Field(default=None, max_length=limits.MAX_VALUE_LENGTH)
    value_from: OpaqueObject | None = Field(
        default=None, description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef...)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set either value or valueFrom, not both")
        return self


class LocalObjectReference(CamelModel):
    name: str = Field(min_length=1, max_length=253)
    optional: bool | None = Field(default=None, strict=True)


class EnvFromSource(CamelModel):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.secretRef) != has(self.configMapRef)",
                "set exactly one of secretRef and configMapRef",
            )
        )
    )

    prefix: str | None = Field(default=None, max_length=253)
    secret_ref: LocalObjectReference | None = Field(default=None, description="All keys of a Secret as env.")
    config_map_ref: LocalObjectReference | None = Field(default=None, description="All keys of a ConfigMap.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("envFrom: set exactly one of secretRef and configMapRef")
        return self


class Toleration(CamelModel):
    key: str | None = Field(default=None, max_length=limits.MAX_KEY_LENGTH)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=limits.MAX_LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=10**9, strict=True)


class QueueSettings(CamelModel):
    """How agents hold the tasks they claim."""

    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        strict=True,
        description="Longest lease between heartbeats; a task whose agent stops heartbeating is requeued "
        "after it. Agents heartbeat every third of it.",
    )
    task_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=7 * 86400,
        strict=True,
        description="Per-task time limit (default: only the task's deadline).",
    )


class ScalingPolicy(CamelModel):
    """One direction's limits, after the HorizontalPodAutoscaler's `behavior`.

    Within any `periodSeconds`, replicas change by at most the larger of `maxStep` pods and `maxStepPercent`
    of the current replicas (no limit when both are unset). A recommendation must hold for the whole
    `stabilizationWindowSeconds` before it is acted on, which damps flapping.
    """

    stabilization_window_seconds: int = Field(default=0, ge=0, le=3600, strict=True)
    max_step: int | None = Field(
        default=None, ge=1, le=10000, strict=True, description="Most pods added or removed per period."
    )
    max_step_percent: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        strict=True,
        description="Most pods added or removed per period, in percent.",
    )
    period_seconds: int = Field(default=15, ge=1, le=1800, strict=True)


def _default_scale_down() -> ScalingPolicy:
    # Agents hold long tasks: wait two minutes of low demand before removing any.
    return ScalingPolicy(stabilization_window_seconds=120)


class AutoscalingMode(enum.StrEnum):
    QUEUE = "queue"  # the operator scales from queue depth
    EXTERNAL = "external"  # an HPA / KEDA drives spec.replicas through the scale subresource


class Autoscaling(CamelModel):
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            # has() guards: the API server checks the rule against the bare default `{}` too.
            (
                "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
            ),
        )
    )

    mode: AutoscalingMode = Field(
        default=AutoscalingMode.QUEUE,
        description="queue: the operator sets replicas from queue depth; external: spec.replicas "
        "(set by an HPA or KEDA through the scale subresource) is followed and never overridden.",
    )
    min_replicas: int = Field(default=1, ge=0, le=10000, strict=True)
    max_replicas: int = Field(default=10, ge=1, le=10000, strict=True)
    target_tasks_per_agent: int = Field(
        default=1,
        ge=1,
        le=1000,
        strict=True,
        description="Queued plus in-flight tasks one agent is meant to carry.",
    )
    scale_up: ScalingPolicy = Field(default_factory=ScalingPolicy)
    scale_down: ScalingPolicy = Field(default_factory=_default_scale_down)

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})"
            )
        return self


class PodDisruptionBudgetSpec(CamelModel):
    enabled: bool = Field(default=True, strict=True)
    max_unavailable: IntOrString = Field(
        default="10%", description="Pods a voluntary disruption (drain) may take down at once."
    )


class PoolWorkspace(CamelModel):
    """Git workspaces (Workflow spec.workspace): the pods' cache volume and the credentials git uses."""

    credentials_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with the Git credentials, mounted read-only as files: `username` + `password`, "
        "or `token` (HTTPS), or `ssh-privatekey` + `known_hosts` (SSH). Never put them in the URL.",
    )
    cache_size_limit: str = Field(
        default="5Gi",
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="Size of the emptyDir holding the pod's Git cache and the tasks' worktrees (a quantity: "
        "5Gi, 500Mi). Caches use at most half; the rest is for worktrees.",
    )


#: A namespace name (DNS-1123 label), as `spec.access.namespaces` lists them.
NAMESPACE_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Namespaces one pool may grant access to; a pool shared wider belongs in a namespace of its own.
MAX_ACCESS_NAMESPACES: Final = 256
Namespace = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)]


class PoolAccess(CamelModel):
    """Who besides the pool's own namespace may send it work (README, "Multi-tenancy")."""

    namespaces: list[Namespace] = Field(
        default_factory=list,
        max_length=MAX_ACCESS_NAMESPACES,
        description="Namespaces whose Workflows may name this pool (`<pool-namespace>/<pool>`). "
        "Workflows of the pool's own namespace always may; any other is Invalid.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class AgentPoolSpec(CamelModel):
    """Desired state of a pool of agents for one role."""

    role: str = Field(
        min_length=1, max_length=63, description="The role its agents play (research, review, ...)."
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.MAX_IMAGE_LENGTH,
        description="Agent image running codeforge-agent (default: the operator's CODEFORGE_AGENT_IMAGE).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=64)
    handler: HandlerSpec
    concurrency: int = Field(
        default=1, ge=1, le=256, strict=True, description="Tasks one agent runs at once."
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        strict=True,
        description="Replicas wanted by an external autoscaler (scale subresource); "
        "used only in autoscaling mode external.",
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=limits.MAX_LIST_ITEMS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=64,
        description="Secrets and ConfigMaps (API keys...) exposed as env.",
    )
    node_selector: dict[Key, LabelValue] = Field(default_factory=dict, max_length=limits.MAX_MAP_KEYS)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: OpaqueObject | None = Field(default=None, description="A core/v1 Affinity.")
    service_account_name: str | None = Field(default=None, max_length=253)
    pod_labels: dict[Key, LabelValue] = Field(
        default_factory=dict, max_length=limits.MAX_MAP_KEYS, description="Extra labels on agent pods."
    )
    pod_annotations: dict[Key, Value] = Field(
        default_factory=dict, max_length=limits.MAX_MAP_KEYS, description="Extra pod annotations."
    )
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        strict=True,
        description="Time an agent gets to finish its tasks when stopped.",
    )
    metrics_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        strict=True,
        description="Agent port serving /healthz, /readyz and /metrics.",
    )
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(default_factory=PodDisruptionBudgetSpec)
    workspace: PoolWorkspace | None = Field(
        default=None,
        description="Git workspaces for pools whose Workflow steps work on a repository: a cache volume "
        "and the credentials Secret. `workspace: {}` gives the volume with the default size.",
    )
    access: PoolAccess = Field(
        default_factory=PoolAccess,
        description="Namespaces other than the pool's own whose Workflows may use it.",
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None,
        description="A rate limit (requests and tokens per minute) shared by every pool naming its key.",
    )


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CamelModel):
    """A condition in the standard Kubernetes shape (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1, max_length=316)
    status: ConditionStatus
    reason: str = Field(min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(default=None, ge=0)


class AgentPoolPhase(enum.StrEnum):
    PENDING = "Pending"  # Deployment created, no agent ready yet
    READY = "Ready"  # agents ready and the pool at its desired size
    SCALING = "Scaling"  # moving towards a new size
    DEGRADED = "Degraded"  # image pull failures, queue unreachable, ...


class AgentPoolStatus(CamelModel):
    """Observed state, written by the operator in one patch per reconcile."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    phase: AgentPoolPhase | None = None
    replicas: int = Field(default=0, description="Agent pods that exist (the scale subresource reads it).")
    ready_replicas: int = 0
    desired_replicas: int = Field(default=0, description="What the autoscaler (or spec.replicas) asks for.")
    selector: str = Field(default="", description="Label selector of the agent pods, for HPA and KEDA.")
    queued: int = Field(default=0, description="Tasks agents can claim now (what the autoscaler scales on).")
    held_back: int = Field(
        default=0, description="Ready tasks waiting because their fair-share key is at its maxConcurrency."
    )
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_task_age_seconds: float = 0.0
    busy_agents: int | None = None
    idle_agents: int | None = None
    last_scale_time: str | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def grants_access(spec: AgentPoolSpec, pool_namespace: str, namespace: str) -> bool:
    """Whether Workflows of `namespace` may send tasks to a pool of `pool_namespace` with this spec."""
    return namespace == pool_namespace or namespace in spec.access.namespaces


def pool_queue_name(namespace: str, name: str) -> str:
    """The queue an AgentPool's agents consume (Redis hash tag `{namespace/name}`)."""
    return f"{namespace}/{name}"
