"""The AgentPool scaling decision: HPA-style stabilization and step limits applied to queue depth."""

from __future__ import annotations

import pytest

from codeforge.api.agentpool import Autoscaling, ScalingPolicy
from codeforge.controller.agentpool.autoscaler import (
    AutoscalerState,
    Demand,
    ScaleReason,
    decide,
    external_replicas,
    raw_recommendation,
    step_limit,
)


def policy(**overrides: object) -> Autoscaling:
    base: dict[str, object] = {
        "min_replicas": 3,
        "max_replicas": 500,
        "target_tasks_per_agent": 2,
        "scale_up": ScalingPolicy(),
        "scale_down": ScalingPolicy(stabilization_window_seconds=60),
    }
    base.update(overrides)
    return Autoscaling.model_validate(base)


@pytest.mark.parametrize(
    ("queued", "in_flight", "expected"),
    [
        (0, 0, 3),  # never below min
        (7, 0, 4),  # ceil(7 / 2)
        (5, 5, 5),  # in-flight tasks count too
        (10_000, 0, 500),  # never above max
    ],
)
def test_raw_recommendation_is_clamped_ceiling_of_load_per_agent(
    queued: int, in_flight: int, expected: int
) -> None:
    assert raw_recommendation(policy(), Demand(queued, in_flight)) == expected


def test_burst_scales_up_at_once_without_step_limit() -> None:
    decision = decide(policy(), current=3, demand=Demand(1000, 0), now=100.0, state=AutoscalerState())
    assert (decision.desired, decision.reason) == (500, ScaleReason.SCALE_UP)
    assert decision.changed


def test_scale_up_step_limit_applies_per_period() -> None:
    p = policy(scale_up=ScalingPolicy(max_step=10, period_seconds=15))
    first = decide(p, current=3, demand=Demand(1000, 0), now=0.0, state=AutoscalerState())
    assert (first.desired, first.reason) == (13, ScaleReason.STEP_LIMITED)
    # Within the same period the budget is spent: no further growth.
    second = decide(p, current=13, demand=Demand(1000, 0), now=5.0, state=first.state)
    assert second.desired == 13
    # The next period allows another step.
    third = decide(p, current=13, demand=Demand(1000, 0), now=16.0, state=second.state)
    assert third.desired == 23


def test_percent_and_pod_steps_take_the_larger() -> None:
    assert step_limit(ScalingPolicy(max_step=4, max_step_percent=100), 10) == 10
    assert step_limit(ScalingPolicy(max_step=4, max_step_percent=10), 10) == 4
    assert step_limit(ScalingPolicy(), 10) is None


def test_scale_down_waits_for_the_stabilization_window() -> None:
    p = policy()
    busy = decide(p, current=3, demand=Demand(40, 0), now=0.0, state=AutoscalerState())
    assert busy.desired == 20
    # Demand falls to 10 tasks (5 agents): hold 20 until the window has passed.
    calmer = decide(p, current=20, demand=Demand(10, 0), now=30.0, state=busy.state)
    assert (calmer.desired, calmer.reason) == (20, ScaleReason.STABILIZING)
    later = decide(p, current=20, demand=Demand(10, 0), now=61.0, state=calmer.state)
    assert (later.desired, later.reason) == (5, ScaleReason.SCALE_DOWN)


def test_scale_down_step_limit() -> None:
    p = policy(scale_down=ScalingPolicy(stabilization_window_seconds=0, max_step=5, period_seconds=60))
    first = decide(p, current=20, demand=Demand(10, 0), now=0.0, state=AutoscalerState())
    assert (first.desired, first.reason) == (15, ScaleReason.STEP_LIMITED)
    again = decide(p, current=15, demand=Demand(10, 0), now=10.0, state=first.state)
    assert again.desired == 15


def test_empty_queue_through_the_window_goes_straight_to_min_despite_the_step_limit() -> None:
    p = policy(scale_down=ScalingPolicy(stabilization_window_seconds=60, max_step=1, period_seconds=600))
    state = AutoscalerState()
    decision = decide(p, current=50, demand=Demand(0, 0), now=0.0, state=state)
    assert decision.desired == 50  # empty only just now
    decision = decide(p, current=50, demand=Demand(0, 0), now=30.0, state=decision.state)
    assert decision.desired == 50
    decision = decide(p, current=50, demand=Demand(0, 0), now=60.0, state=decision.state)
    assert (decision.desired, decision.reason) == (3, ScaleReason.QUEUE_EMPTY)


def test_a_task_in_between_restarts_the_empty_window() -> None:
    p = policy(scale_down=ScalingPolicy(stabilization_window_seconds=60, max_step=1, period_seconds=600))
    d = decide(p, current=50, demand=Demand(0, 0), now=0.0, state=AutoscalerState())
    d = decide(p, current=50, demand=Demand(0, 1), now=40.0, state=d.state)
    d = decide(p, current=50, demand=Demand(0, 0), now=70.0, state=d.state)
    assert d.state.empty_since == 70.0
    assert d.desired == 49  # ordinary step-limited scale-down, not the jump to min


def test_scale_up_stabilization_needs_sustained_demand() -> None:
    p = policy(scale_up=ScalingPolicy(stabilization_window_seconds=10))
    spike = decide(p, current=3, demand=Demand(100, 0), now=0.0, state=AutoscalerState())
    assert spike.desired == 50  # first sample: the window holds only this recommendation
    p2 = policy(scale_up=ScalingPolicy(stabilization_window_seconds=10))
    calm = decide(p2, current=3, demand=Demand(0, 0), now=0.0, state=AutoscalerState())
    spike2 = decide(p2, current=3, demand=Demand(100, 0), now=5.0, state=calm.state)
    assert (spike2.desired, spike2.reason) == (3, ScaleReason.STABILIZING)
    sustained = decide(p2, current=3, demand=Demand(100, 0), now=11.0, state=spike2.state)
    assert sustained.desired == 50


def test_bounds_apply_immediately_when_min_is_raised() -> None:
    decision = decide(
        policy(min_replicas=10), current=3, demand=Demand(0, 0), now=0.0, state=AutoscalerState()
    )
    assert decision.desired == 10


def test_state_stays_bounded() -> None:
    p = policy()
    state = AutoscalerState()
    for second in range(1000):
        state = decide(p, current=3, demand=Demand(second % 7, 0), now=float(second), state=state).state
    assert len(state.recommendations) <= 62  # the 60 s window, sampled each second


def test_external_mode_follows_spec_replicas_and_never_invents_one() -> None:
    p = policy(mode="external")
    assert external_replicas(p, requested=42, current=7) == 42
    assert external_replicas(p, requested=None, current=7) == 7
    assert external_replicas(p, requested=None, current=None) == 3


def test_a_fresh_autoscaler_does_not_scale_down_before_one_window() -> None:
    # After an operator restart the history is gone: idle pools shrink only after a full window.
    p = policy()
    first = decide(p, current=40, demand=Demand(0, 0), now=1000.0, state=AutoscalerState())
    assert (first.desired, first.reason) == (40, ScaleReason.STABILIZING)
    later = decide(p, current=40, demand=Demand(0, 0), now=1060.0, state=first.state)
    assert later.desired == 3


async def test_tasks_held_back_by_max_concurrency_do_not_scale_the_pool() -> None:
    """A Workflow with maxConcurrency 2 floods the pool: its agents can run 2 tasks at a time, so the pool
    scales to what runs (2 in flight, target 1 per agent), not to the 50 waiting behind the cap."""
    from codeforge.api.agentpool import AgentPoolSpec
    from codeforge.controller.agentpool.reconcile import QueueView, desired_replicas
    from codeforge.queue.memory import MemoryTaskQueue
    from support.tasks import make_task

    queue = MemoryTaskQueue()
    await queue.enqueue_many([make_task("ns/p", f"t{i}", workflow="w", max_concurrency=2) for i in range(52)])
    leases = [await queue.claim("ns/p", "agent", timeout=0) for _ in range(3)]
    assert [lease is not None for lease in leases] == [True, True, False]
    stats = await queue.stats("ns/p")
    assert (stats.queued, stats.held_back, stats.in_flight) == (0, 50, 2)

    spec = AgentPoolSpec.model_validate(
        {
            "role": "r",
            "handler": {"kind": "echo"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 100, "targetTasksPerAgent": 1},
        }
    )
    decision = desired_replicas(spec, 1, QueueView(stats, {}, None), AutoscalerState(), now=0.0)

    assert not isinstance(decision, int)
    assert (decision.desired, decision.reason) == (2, ScaleReason.SCALE_UP)
    await queue.close()
