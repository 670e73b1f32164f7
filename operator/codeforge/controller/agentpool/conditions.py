"""AgentPool conditions (Ready, Progressing, Degraded) and the reasons they carry, after KubeRay and Kueue.

Every reason is a constant here, with its meaning, so `kubectl describe`, alerts and docs can rely on it.

| Type        | Status | Reason           | Meaning                                                       |
|-------------|--------|------------------|---------------------------------------------------------------|
| Ready       | True   | AgentsReady      | at least as many agents are ready as desired                  |
| Ready       | False  | AgentsNotReady   | fewer ready agents than desired (starting, crashing, pending) |
| Ready       | False  | InvalidSpec      | the spec cannot be turned into a Deployment                   |
| Progressing | True   | ScalingUp        | the Deployment is growing towards the desired size            |
| Progressing | True   | ScalingDown      | agents are being removed (idle ones first)                    |
| Progressing | True   | RollingOut       | a new pod template is being rolled out                        |
| Progressing | False  | Stable           | the Deployment matches the desired size and template          |
| Degraded    | True   | ImagePullFailed  | agents cannot pull their image (ErrImagePull, BackOff)        |
| Degraded    | True   | AgentsCrashing   | agents restart in a loop (CrashLoopBackOff)                   |
| Degraded    | True   | QueueUnreachable | the operator cannot read the pool's queue; replicas are held  |
| Degraded    | True   | DeploymentFailed | the Deployment reports a failure (quota, progress deadline)   |
| Degraded    | True   | InvalidSpec      | see Ready/InvalidSpec                                         |
| Degraded    | False  | AsExpected       | nothing is wrong                                              |
| RateLimit   | True   | FleetWide        | spec.rateLimit names a key the platform declares fleet-wide   |
| RateLimit   | True   | Namespace        | spec.rateLimit names a key of the pool's namespace            |
| RateLimit   | False  | Conflict         | another declarer gives the key other numbers (both named)     |

RateLimit is there only while the pool has a `spec.rateLimit`; a Conflict does not degrade the pool (its
agents run, under the platform's numbers or their own).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.api.agentpool import AgentPoolPhase
from codeforge.controller.kstatus import ConditionValue, EventType, KubeEvent
from codeforge.controller.ratelimits import Resolved


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    RATE_LIMIT = "RateLimit"


class Reason(enum.StrEnum):
    AGENTS_READY = "AgentsReady"
    AGENTS_NOT_READY = "AgentsNotReady"
    INVALID_SPEC = "InvalidSpec"
    SCALING_UP = "ScalingUp"
    SCALING_DOWN = "ScalingDown"
    ROLLING_OUT = "RollingOut"
    STABLE = "Stable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    AGENTS_CRASHING = "AgentsCrashing"
    QUEUE_UNREACHABLE = "QueueUnreachable"
    DEPLOYMENT_FAILED = "DeploymentFailed"
    AS_EXPECTED = "AsExpected"
    FLEET_WIDE = "FleetWide"
    NAMESPACE = "Namespace"
    CONFLICT = "Conflict"


#: Container waiting reasons that mean the image cannot be pulled.
IMAGE_PULL_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CRASH_REASONS: Final = frozenset({"CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True, slots=True)
class PodProblem:
    pod: str
    reason: str  # the container's waiting reason
    message: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reconcile saw; everything the conditions are computed from."""

    desired: int
    replicas: int = 0  # Deployment status.replicas
    ready: int = 0
    updated: int = 0  # pods already on the current template
    deployment_current: bool = True  # the Deployment controller has observed the latest generation
    deployment_failure: str | None = None  # message of a failed Deployment condition
    pod_problems: Sequence[PodProblem] = field(default_factory=tuple)
    queue_error: str | None = None
    spec_error: str | None = None
    rate_limit: ConditionValue | None = None  # describe_rate_limit()


def describe_rate_limit(limit: Resolved | None, conflict: str | None) -> ConditionValue | None:
    """The RateLimit condition: which state the agents share and by whose numbers, or the conflict."""
    if limit is None:
        return None
    if conflict:
        return ConditionValue(ConditionType.RATE_LIMIT, False, Reason.CONFLICT, conflict)
    key = limit.limit.key
    if limit.fleet:
        message = f"{key!r}: fleet-wide, the platform's {limit.limit.describe()}"
        return ConditionValue(ConditionType.RATE_LIMIT, True, Reason.FLEET_WIDE, message)
    message = f"{key!r}: shared by the pools of namespace {limit.scope}, {limit.limit.describe()}"
    return ConditionValue(ConditionType.RATE_LIMIT, True, Reason.NAMESPACE, message)


def _summarise(problems: Iterable[PodProblem], limit: int = 3) -> str:
    problems = list(problems)
    shown = "; ".join(
        f"{p.pod}: {p.reason}{' (' + p.message + ')' if p.message else ''}" for p in problems[:limit]
    )
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more


def evaluate(obs: Observation) -> list[ConditionValue]:
    """The three conditions for one observation, in a stable order."""
    ready, progressing, degraded = ConditionType.READY, ConditionType.PROGRESSING, ConditionType.DEGRADED
    if obs.spec_error is not None:
        return [
            ConditionValue(ready, False, Reason.INVALID_SPEC, obs.spec_error),
            ConditionValue(progressing, False, Reason.INVALID_SPEC, obs.spec_error),
            ConditionValue(degraded, True, Reason.INVALID_SPEC, obs.spec_error),
        ]
    if obs.ready >= obs.desired:
        ready_value = ConditionValue(
            ready, True, Reason.AGENTS_READY, f"{obs.ready}/{obs.desired} agents ready"
        )
    else:
        ready_value = ConditionValue(
            ready, False, Reason.AGENTS_NOT_READY, f"{obs.ready}/{obs.desired} agents ready"
        )

    if not obs.deployment_current or obs.updated < min(obs.replicas, obs.desired):
        progress = ConditionValue(progressing, True, Reason.ROLLING_OUT, "rolling out a new agent template")
    elif obs.replicas < obs.desired or obs.ready < obs.desired:
        progress = ConditionValue(
            progressing, True, Reason.SCALING_UP, f"scaling up to {obs.desired} ({obs.ready} ready)"
        )
    elif obs.replicas > obs.desired:
        progress = ConditionValue(
            progressing, True, Reason.SCALING_DOWN, f"scaling down from {obs.replicas} to {obs.desired}"
        )
    else:
        progress = ConditionValue(progressing, False, Reason.STABLE, f"{obs.desired} agents")

    pulls = [p for p in obs.pod_problems if p.reason in IMAGE_PULL_REASONS]
    crashes = [p for p in obs.pod_problems if p.reason in CRASH_REASONS]
    if pulls:
        health = ConditionValue(degraded, True, Reason.IMAGE_PULL_FAILED, _summarise(pulls))
    elif obs.queue_error is not None:
        health = ConditionValue(degraded, True, Reason.QUEUE_UNREACHABLE, obs.queue_error)
    elif crashes:
        health = ConditionValue(degraded, True, Reason.AGENTS_CRASHING, _summarise(crashes))
    elif obs.deployment_failure is not None:
        health = ConditionValue(degraded, True, Reason.DEPLOYMENT_FAILED, obs.deployment_failure)
    else:
        health = ConditionValue(degraded, False, Reason.AS_EXPECTED, "")
    return [ready_value, progress, health, *([obs.rate_limit] if obs.rate_limit else [])]


def phase(values: Sequence[ConditionValue]) -> AgentPoolPhase:
    """The one-word summary for `kubectl get`: Degraded beats Scaling beats Pending/Ready."""
    by_type = {v.type: v for v in values}
    if by_type[ConditionType.DEGRADED].status:
        return AgentPoolPhase.DEGRADED
    if by_type[ConditionType.PROGRESSING].status:
        return AgentPoolPhase.SCALING
    return AgentPoolPhase.READY if by_type[ConditionType.READY].status else AgentPoolPhase.PENDING


def rate_limit_events(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[KubeEvent]:
    """A Warning when the pool's rate limit comes into conflict (or into another one)."""
    before = next((c for c in old if c.get("type") == ConditionType.RATE_LIMIT.value), {})
    after = next((c for c in new if c.get("type") == ConditionType.RATE_LIMIT.value), {})
    if after.get("reason") == Reason.CONFLICT and before.get("message") != after.get("message"):
        return [KubeEvent(EventType.WARNING, "RateLimitConflict", str(after.get("message")))]
    return []
