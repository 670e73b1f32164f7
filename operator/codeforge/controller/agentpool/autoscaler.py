"""The scaling decision: how many agents an AgentPool should run, from its queue. Pure; no I/O, no clock.

    raw     = clamp(ceil((queued + in_flight) / targetTasksPerAgent), minReplicas, maxReplicas)
              (queued: claimable tasks only; those held back by their key's maxConcurrency wait for leases
              that are already in flight, so agents added for them would sit idle)
    up      = the lowest raw seen in the scale-up stabilization window   (scale up only on sustained demand)
    down    = the highest raw seen in the scale-down stabilization window (scale down only on sustained calm)
    desired = up if current < up, down if current > down, else current;
              then limited by the step policy of that direction over its period; then clamped to min/max.

This is the HorizontalPodAutoscaler's `behavior` algorithm, applied to queue depth. One exception: when the
queue has stayed empty for the whole scale-down window, the pool goes straight back to minReplicas, since idle
agents lose nothing when stopped and a step limit would only keep them around.

The caller keeps the `AutoscalerState` between decisions (in memory: after an operator restart the windows
start afresh, which only delays a scale-down).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from codeforge.api.agentpool import Autoscaling, ScalingPolicy


class ScaleReason(enum.StrEnum):
    """Why a decision came out as it did; used in Events, logs and the `codeforge_scale_decisions` metric."""

    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    QUEUE_EMPTY = "QueueEmpty"  # the queue stayed empty through the scale-down window: back to min
    STABLE = "Stable"  # demand matches the current size
    STABILIZING = "Stabilizing"  # demand changed, but not for a whole stabilization window yet
    STEP_LIMITED = "StepLimited"  # moving, but by at most the policy's step this period
    BOUNDS = "Bounds"  # only minReplicas / maxReplicas moved the size


@dataclass(frozen=True, slots=True)
class Demand:
    """What the queue asks for right now."""

    queued: int  # claimable now
    in_flight: int
    #: Ready but held back by their fair-share key's maxConcurrency: not load (shown, never scaled on).
    held_back: int = 0

    @property
    def load(self) -> int:
        return max(0, self.queued) + max(0, self.in_flight)


@dataclass(frozen=True, slots=True)
class AutoscalerState:
    """Memory between decisions: recent recommendations and changes, and since when the queue is empty."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw recommendation)
    changes: tuple[tuple[float, int], ...] = ()  # (time, replicas added (+) or removed (-))
    empty_since: float | None = None
    started_at: float | None = None  # first decision: no scale-down before one window of history exists


@dataclass(frozen=True, slots=True)
class Decision:
    current: int
    desired: int
    raw: int
    reason: ScaleReason
    state: AutoscalerState = field(default_factory=AutoscalerState)

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def raw_recommendation(policy: Autoscaling, demand: Demand) -> int:
    """Agents needed for the current load, within the pool's bounds."""
    wanted = math.ceil(demand.load / policy.target_tasks_per_agent)
    return clamp(wanted, policy.min_replicas, policy.max_replicas)


def step_limit(policy: ScalingPolicy, replicas: int) -> int | None:
    """Most replicas one period may add or remove (None: unlimited); the larger policy wins, as in HPA."""
    limits = []
    if policy.max_step is not None:
        limits.append(policy.max_step)
    if policy.max_step_percent is not None:
        limits.append(math.ceil(replicas * policy.max_step_percent / 100))
    return max(limits) if limits else None


def decide(policy: Autoscaling, current: int, demand: Demand, now: float, state: AutoscalerState) -> Decision:
    """The replicas the pool should have now, and the state to pass to the next call."""
    raw = raw_recommendation(policy, demand)
    up, down = policy.scale_up, policy.scale_down
    horizon = max(up.stabilization_window_seconds, down.stabilization_window_seconds)
    recommendations = (*(r for r in state.recommendations if r[0] >= now - horizon), (now, raw))
    empty_since = (state.empty_since if state.empty_since is not None else now) if demand.load == 0 else None

    up_target = min(r for t, r in recommendations if t >= now - up.stabilization_window_seconds)
    down_target = max(r for t, r in recommendations if t >= now - down.stabilization_window_seconds)
    started_at = now if state.started_at is None else state.started_at
    if now - started_at < down.stabilization_window_seconds:
        # A fresh autoscaler (new pool, operator restart) has not watched a whole window yet.
        down_target = max(down_target, current)
    queue_drained = empty_since is not None and now - empty_since >= down.stabilization_window_seconds

    if queue_drained:
        desired, reason = policy.min_replicas, ScaleReason.QUEUE_EMPTY
    elif current < up_target:
        desired = _limit_up(up, current, up_target, state.changes, now)
        reason = ScaleReason.SCALE_UP if desired == up_target else ScaleReason.STEP_LIMITED
    elif current > down_target:
        desired = _limit_down(down, current, down_target, state.changes, now)
        reason = ScaleReason.SCALE_DOWN if desired == down_target else ScaleReason.STEP_LIMITED
    else:
        desired = current
        reason = ScaleReason.STABLE if raw == current else ScaleReason.STABILIZING
    bounded = clamp(desired, policy.min_replicas, policy.max_replicas)
    if bounded != desired:
        desired, reason = bounded, ScaleReason.BOUNDS
    if desired == current and reason is ScaleReason.QUEUE_EMPTY:
        reason = ScaleReason.STABLE

    period = max(up.period_seconds, down.period_seconds)
    changes = tuple(c for c in state.changes if c[0] >= now - period)
    if desired != current:
        changes += ((now, desired - current),)
    new_state = replace(
        state,
        recommendations=recommendations,
        changes=changes,
        empty_since=empty_since,
        started_at=started_at,
    )
    return Decision(current=current, desired=desired, raw=raw, reason=reason, state=new_state)


def _limit_up(
    policy: ScalingPolicy, current: int, desired: int, changes: tuple[tuple[float, int], ...], now: float
) -> int:
    added = sum(delta for t, delta in changes if t >= now - policy.period_seconds and delta > 0)
    period_start = current - added
    limit = step_limit(policy, period_start)
    if limit is None:
        return desired
    return max(current, min(desired, period_start + limit))


def _limit_down(
    policy: ScalingPolicy, current: int, desired: int, changes: tuple[tuple[float, int], ...], now: float
) -> int:
    removed = -sum(delta for t, delta in changes if t >= now - policy.period_seconds and delta < 0)
    period_start = current + removed
    limit = step_limit(policy, period_start)
    if limit is None:
        return desired
    return min(current, max(desired, period_start - limit))


def external_replicas(policy: Autoscaling, requested: int | None, current: int | None) -> int:
    """Mode `external`: follow spec.replicas (an HPA or KEDA writes it through the scale subresource).

    Before anything has set it, keep the Deployment as it is, or start at minReplicas.
    """
    if requested is not None:
        return requested
    if current is not None:
        return current
    return policy.min_replicas
