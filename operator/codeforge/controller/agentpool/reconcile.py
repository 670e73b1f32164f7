"""Reconcile one AgentPool: an ordered list of steps, and one status computed at the end (KubeRay style).

    1. validate the spec (a bad one gives InvalidSpec conditions, never a crash loop);
    2. read the queue (depth, in flight, agents' busy/idle states); unreachable -> hold replicas;
    3. decide the replicas (autoscaler in mode queue; spec.replicas in mode external);
    4. before a scale-in, mark idle agents cheapest to delete (pod-deletion-cost); with per-pool Redis
       users, keep the pool's Secret and ACL user (identity.py) on full reconciles and extras checks;
    5. create the Deployment or correct its drift (template and replicas);
    6. optionally check the owned metrics Service and PodDisruptionBudget;
    7. look at the pods when agents are missing (image pulls, crash loops);
    8. compute conditions, phase and Events.

The Kopf handlers call `reconcile` and write the returned status in one patch; nothing here imports Kopf.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolSpec, AgentPoolStatus, AutoscalingMode, Condition
from codeforge.api.task import QueueStats
from codeforge.api.workflow import format_validation_error
from codeforge.controller import ratelimits
from codeforge.controller.agentpool import builders, conditions, identity
from codeforge.controller.agentpool.autoscaler import (
    AutoscalerState,
    Decision,
    Demand,
    decide,
    external_replicas,
)
from codeforge.controller.agentpool.conditions import ConditionType, Observation, PodProblem
from codeforge.controller.agentpool.drift import differences
from codeforge.controller.config import AgentDefaults
from codeforge.controller.kstatus import EventType, KubeEvent, merge_conditions
from codeforge.controller.kube import PDBS, PODS, KubeApi, KubeApiError, kind_of
from codeforge.queue import TaskQueue
from codeforge.redis.connect import Connection

JSON = dict[str, Any]
log = logging.getLogger(__name__)

#: Status fields that only mirror the queue: written at most every status interval on their own.
GAUGE_FIELDS: Final = frozenset(
    {"queued", "delayed", "inFlight", "dead", "oldestTaskAgeSeconds", "busyAgents", "idleAgents"}
)
#: Pod patches in flight at once while marking deletion costs (500 pods must not open 500 requests).
PATCH_CONCURRENCY: Final = 20


@dataclass(frozen=True, slots=True)
class PoolObject:
    ref: builders.PoolRef
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


@dataclass(slots=True)
class Deps:
    kube: KubeApi
    queue: TaskQueue | None  # None: not connected (yet)
    agents: AgentDefaults
    queue_timeout: float = 2.0
    queue_error: str = "the operator is not connected to the queue yet"  # why `queue` is None
    redis: Connection | None = None  # the operator's admin connection, for the pools' ACL users
    rate_limits: ratelimits.Declarations = field(default_factory=ratelimits.Declarations)


@dataclass(slots=True)
class Outcome:
    status: JSON
    events: list[KubeEvent] = field(default_factory=list)
    autoscaler: AutoscalerState = field(default_factory=AutoscalerState)
    desired: int | None = None  # replicas applied to the Deployment; None when nothing was applied
    identity_error: str | None = None  # why the pool's Redis user is not set (kept until the next check)


@dataclass(frozen=True, slots=True)
class QueueView:
    stats: QueueStats | None
    agent_states: Mapping[str, str]
    error: str | None


class SpecError(ValueError):
    """The spec cannot become a Deployment; the message names the field."""


#: Problems a condition's message names (the rest are counted).
MAX_SPEC_PROBLEMS: Final = 5


def spec_error_message(exc: ValidationError) -> str:
    """The spec's first problems on one line, each `spec.field.path: what is wrong` with the fix, written as
    for a Workflow (`spec.tolerations[0].tolerationSeconds: ...: write a whole number without quotes`)."""
    problems = format_validation_error(exc, prefix="spec").splitlines()
    shown = [p for p in problems if not p.startswith("spec: ... and ")][:MAX_SPEC_PROBLEMS]
    more = exc.error_count() - len(shown)
    return "; ".join(shown + ([f"... and {more} more problems"] if more > 0 else []))


def parse_spec(raw: Mapping[str, Any], ref: builders.PoolRef, agents: AgentDefaults) -> AgentPoolSpec:
    try:
        spec = AgentPoolSpec.model_validate(dict(raw))
        builders.agent_env(ref, spec, agents)  # handler settings that cannot become env fail here
    except ValidationError as exc:
        raise SpecError(spec_error_message(exc)) from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return spec


async def observe_queue(deps: Deps, ref: builders.PoolRef) -> QueueView:
    if deps.queue is None:
        return QueueView(None, {}, deps.queue_error)
    try:
        async with asyncio.timeout(deps.queue_timeout):
            stats = await deps.queue.stats(ref.queue)
            agent_states = await deps.queue.consumer_states(ref.queue)
    except (TimeoutError, OSError, ConnectionError) as exc:
        return QueueView(None, {}, f"queue unreachable: {exc or type(exc).__name__}")
    except Exception as exc:  # a queue backend error of any kind must not stop the pool's reconcile
        return QueueView(None, {}, f"queue error: {type(exc).__name__}: {exc}")
    return QueueView(stats, agent_states, None)


def desired_replicas(
    spec: AgentPoolSpec, current: int | None, view: QueueView, state: AutoscalerState, now: float
) -> Decision | int:
    """A Decision in mode queue; a plain number when following spec.replicas or holding on queue errors."""
    policy = spec.autoscaling
    if policy.mode is AutoscalingMode.EXTERNAL:
        return external_replicas(policy, spec.replicas, current)
    if view.stats is None:
        # Blind: keep what runs (within bounds) rather than scale on a guess.
        held = current if current is not None else policy.min_replicas
        return max(policy.min_replicas, min(policy.max_replicas, held))
    baseline = current if current is not None else policy.min_replicas
    stats = view.stats
    demand = Demand(queued=stats.queued, in_flight=stats.in_flight, held_back=stats.held_back)
    return decide(policy, baseline, demand, now, state)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[PodProblem]:
    """Why agents are not ready: a container waiting on an image or a crash, or an unschedulable pod."""
    problems = []
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        containers = status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
        waiting = [
            c["state"]["waiting"] for c in containers if c.get("state", {}).get("waiting", {}).get("reason")
        ]
        if waiting:
            problems.append(PodProblem(name, waiting[0]["reason"], waiting[0].get("message", "")))
            continue
        for condition in status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                problems.append(PodProblem(name, "Unschedulable", condition.get("message", "")))
    return problems


async def mark_idle_agents_first(deps: Deps, ref: builders.PoolRef, view: QueueView) -> int:
    """Set pod-deletion-cost from the agents' reports so the ReplicaSet removes idle agents first.

    Best effort: if the pods cannot be listed, the scale-in still happens (busy agents then rely on their
    graceful drain, which hands unfinished tasks back to the queue).
    """
    try:
        pods = await deps.kube.list(PODS, ref.namespace, builders.selector_labels(ref.name))
    except KubeApiError as exc:
        log.warning("cannot list the agents of %s to prefer idle ones on scale-in: %s", ref.queue, exc)
        return 0
    current = {
        p["metadata"]["name"]: p["metadata"].get("annotations", {}).get(builders.POD_DELETION_COST)
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }
    patches = builders.deletion_cost_patches(current, view.agent_states)
    limit = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def apply(pod: str, patch: JSON) -> None:
        async with limit:
            try:
                await deps.kube.patch(PODS, ref.namespace, pod, patch)
            except KubeApiError as exc:  # a pod that went away meanwhile is fine
                log.debug("pod-deletion-cost on %s/%s: %s", ref.namespace, pod, exc)

    await asyncio.gather(*(apply(pod, patch) for pod, patch in patches.items()))
    return len(patches)


def _owned_by(live: Mapping[str, Any], ref: builders.PoolRef) -> bool:
    return any(o.get("uid") == ref.uid for o in live.get("metadata", {}).get("ownerReferences", []))


async def apply_object(kube: KubeApi, desired: JSON, live: JSON | None, ref: builders.PoolRef) -> JSON:
    """Create the object, or patch the fields that drifted; refuse to take over a stranger's object."""
    kind = kind_of(desired)
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    if live is None:
        live = await kube.get(kind, namespace, name)
    if live is None:
        try:
            return await kube.create(desired)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            live = await kube.get(kind, namespace, name)
            if live is None:
                raise
    if not _owned_by(live, ref):
        raise SpecError(
            f"{desired['kind']} {namespace}/{name} already exists and is not owned by this AgentPool: "
            "rename the pool or delete that object"
        )
    drifted = differences({k: desired[k] for k in ("metadata", "spec")}, live)
    if not drifted:
        return live
    log.info("%s %s/%s drifted at %s; correcting", desired["kind"], namespace, name, ", ".join(drifted[:5]))
    patch = {
        "metadata": {k: desired["metadata"][k] for k in ("labels", "ownerReferences")},
        "spec": desired["spec"],
    }
    return await kube.patch(kind, namespace, name, patch)


async def apply_owned_extras(deps: Deps, ref: builders.PoolRef, spec: AgentPoolSpec) -> None:
    await apply_object(deps.kube, builders.build_metrics_service(ref, spec), None, ref)
    pdb = builders.build_pdb(ref, spec)
    if pdb is not None:
        await apply_object(deps.kube, pdb, None, ref)
    else:
        live = await deps.kube.get(PDBS, ref.namespace, builders.names(ref.name)["pdb"])
        if live is not None and _owned_by(live, ref):
            await deps.kube.delete(PDBS, ref.namespace, builders.names(ref.name)["pdb"])


def deployment_observation(deployment: Mapping[str, Any]) -> dict[str, Any]:
    status = deployment.get("status", {})
    generation = deployment.get("metadata", {}).get("generation")
    failure = None
    for condition in status.get("conditions", []):
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            failure = condition.get("message") or condition.get("reason")
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            failure = condition.get("message") or "progress deadline exceeded"
    return {
        "replicas": status.get("replicas", 0),
        "ready": status.get("readyReplicas", 0),
        "updated": status.get("updatedReplicas", 0),
        "deployment_current": generation is None or status.get("observedGeneration", 0) >= generation,
        "deployment_failure": failure,
    }


def _scale_event(before: int, after: int, why: str) -> KubeEvent:
    reason = "ScaledUp" if after > before else "ScaledDown"
    return KubeEvent(EventType.NORMAL, reason, f"Scaled agents from {before} to {after}: {why}")


def _health_events(old: Mapping[str, Any], new: Sequence[JSON]) -> list[KubeEvent]:
    """A Warning when the pool becomes degraded (or for a new reason), a Normal event when it recovers."""
    before = {c.get("type"): c for c in old.get("conditions", [])}.get(ConditionType.DEGRADED.value, {})
    after = next(c for c in new if c["type"] == ConditionType.DEGRADED.value)
    if after["status"] == "True" and (
        before.get("status") != "True" or before.get("reason") != after["reason"]
    ):
        return [KubeEvent(EventType.WARNING, after["reason"], after["message"] or after["reason"])]
    if after["status"] == "False" and before.get("status") == "True":
        return [KubeEvent(EventType.NORMAL, "Recovered", f"no longer degraded ({before.get('reason')})")]
    return []


async def reconcile(
    pool: PoolObject,
    deps: Deps,
    *,
    deployment: JSON | None,
    autoscaler: AutoscalerState,
    now: float,
    timestamp: str,
    check_extras: bool,
    last_desired: int | None = None,
    identity_error: str | None = None,
) -> Outcome:
    """Bring the pool's objects to the spec and return the status to write (and Events to post)."""
    ref = pool.ref
    old_status = dict(pool.status)
    events: list[KubeEvent] = []
    status = AgentPoolStatus.model_validate(old_status)
    status.observed_generation = pool.generation
    status.selector = builders.selector_string(ref.name)

    try:
        spec = parse_spec(pool.spec, ref, deps.agents)  # step 1
    except SpecError as exc:
        invalid = Observation(desired=status.desired_replicas, spec_error=str(exc))
        return _finish(old_status, status, invalid, events, autoscaler, timestamp)

    view = await observe_queue(deps, ref)  # step 2
    if view.stats is not None:
        status.queued, status.delayed = view.stats.queued, view.stats.delayed
        status.held_back = view.stats.held_back
        status.in_flight, status.dead = view.stats.in_flight, view.stats.dead
        status.oldest_task_age_seconds = round(view.stats.oldest_age_seconds, 1)
        states = list(view.agent_states.values())
        status.busy_agents, status.idle_agents = states.count("busy"), states.count("idle")

    # step 3. The operator's own last decision is "current": a hand-edited Deployment is drift, not input.
    current = deployment.get("spec", {}).get("replicas") if deployment else None
    if deployment and last_desired is not None:
        current = last_desired
    elif deployment and isinstance(old_status.get("desiredReplicas"), int):
        current = old_status["desiredReplicas"]
    decision = desired_replicas(spec, current, view, autoscaler, now)
    desired = decision.desired if isinstance(decision, Decision) else decision
    if isinstance(decision, Decision):
        autoscaler = decision.state

    limit = builders.rate_limit(ref, spec, deps.agents)  # valid: parse_spec checked it
    shared = deps.rate_limits.declare(ref.namespace, ref.name, limit)  # other pools of the namespace
    conflict = (limit.conflict if limit else None) or shared
    try:
        if current is not None and desired < current and view.stats is not None:  # step 4
            await mark_idle_agents_first(deps, ref, view)
        if deps.agents.redis_acl and check_extras:
            identity_error = await identity.reconcile_identity(
                deps.kube, deps.redis, ref, spec.role, deps.agents, limit
            )
        body = builders.build_deployment(ref, spec, desired, deps.agents)  # step 5
        deployment = await apply_object(deps.kube, body, deployment, ref)
        if check_extras:  # step 6
            await apply_owned_extras(deps, ref, spec)
    except (SpecError, KubeApiError) as exc:
        if isinstance(exc, KubeApiError) and exc.retryable:
            raise
        # A name clash, or the API server refused what the spec produced (an invalid affinity...).
        message = str(exc) if isinstance(exc, SpecError) else f"the API server refused: {exc.message}"
        refused = Observation(desired=desired, spec_error=message)
        return _finish(old_status, status, refused, events, autoscaler, timestamp)

    seen = deployment_observation(deployment)
    problems: list[PodProblem] = []
    if seen["ready"] < desired:  # step 7
        try:
            pods = await deps.kube.list(PODS, ref.namespace, builders.selector_labels(ref.name))
        except KubeApiError as exc:  # diagnosis only: the reconcile itself has succeeded
            log.warning("cannot list the agents of %s: %s", ref.queue, exc)
            pods = []
        problems = pod_problems([p for p in pods if not _pod_ready(p)])

    if current is not None and desired != current:  # step 8
        if isinstance(decision, Decision) and view.stats is not None:
            load = f"{view.stats.queued} queued + {view.stats.in_flight} in flight"
            if view.stats.held_back:
                load += f" ({view.stats.held_back} more held back by maxConcurrency)"
            why = f"{load} at {spec.autoscaling.target_tasks_per_agent} per agent ({decision.reason})"
        else:
            why = "following spec.replicas (external autoscaler)"
        events.append(_scale_event(current, desired, why))
        status.last_scale_time = timestamp
    status.replicas = seen["replicas"]
    status.ready_replicas = seen["ready"]
    status.desired_replicas = desired
    queue_error = view.error or (f"Redis identity: {identity_error}" if identity_error else None)
    observation = Observation(
        desired=desired,
        pod_problems=problems,
        queue_error=queue_error,
        rate_limit=conditions.describe_rate_limit(limit, conflict),
        **seen,
    )
    outcome = _finish(old_status, status, observation, events, autoscaler, timestamp)
    outcome.desired = desired
    outcome.identity_error = identity_error
    return outcome


def _finish(
    old_status: Mapping[str, Any],
    status: AgentPoolStatus,
    observation: Observation,
    events: list[KubeEvent],
    autoscaler: AutoscalerState,
    timestamp: str,
) -> Outcome:
    values = conditions.evaluate(observation)
    merged = merge_conditions(
        old_status.get("conditions", []), values, timestamp, status.observed_generation, keep_others=False
    )
    status.conditions = [Condition.model_validate(c) for c in merged]
    status.phase = conditions.phase(values)
    body = status.to_k8s()
    events += _health_events(old_status, merged)
    events += conditions.rate_limit_events(old_status.get("conditions", []), merged)
    return Outcome(status=body, events=events, autoscaler=autoscaler)


def status_needs_write(old: Mapping[str, Any], new: Mapping[str, Any], gauges_due: bool) -> bool:
    """Write when anything but the queue gauges changed, or when the gauges are due for a refresh."""
    if gauges_due:
        return any(old.get(k) != v for k, v in new.items())
    return any(old.get(k) != v for k, v in new.items() if k not in GAUGE_FIELDS)
