"""AgentPool conditions, phase and status bookkeeping: pure functions over one observation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from codeforge.api.agentpool import AgentPoolPhase, AgentPoolSpec
from codeforge.controller.agentpool.conditions import Observation, PodProblem, Reason, evaluate, phase
from codeforge.controller.agentpool.reconcile import pod_problems, spec_error_message, status_needs_write
from codeforge.controller.kstatus import merge_conditions


def reasons(obs: Observation) -> dict[str, tuple[bool, str]]:
    return {v.type.value: (v.status, v.reason.value) for v in evaluate(obs)}


def test_a_pool_at_its_size_is_ready_and_stable() -> None:
    obs = Observation(desired=3, replicas=3, ready=3, updated=3)
    assert reasons(obs) == {
        "Ready": (True, "AgentsReady"),
        "Progressing": (False, "Stable"),
        "Degraded": (False, "AsExpected"),
    }
    assert phase(evaluate(obs)) is AgentPoolPhase.READY


def test_growing_pool_is_progressing_and_not_ready() -> None:
    obs = Observation(desired=10, replicas=10, ready=4, updated=10)
    assert reasons(obs)["Ready"] == (False, "AgentsNotReady")
    assert reasons(obs)["Progressing"] == (True, "ScalingUp")
    assert phase(evaluate(obs)) is AgentPoolPhase.SCALING


def test_shrinking_and_rolling_out_have_their_own_reasons() -> None:
    assert reasons(Observation(desired=2, replicas=5, ready=5, updated=5))["Progressing"] == (
        True,
        "ScalingDown",
    )
    rollout = Observation(desired=3, replicas=3, ready=3, updated=1)
    assert reasons(rollout)["Progressing"] == (True, "RollingOut")
    assert reasons(Observation(desired=3, replicas=3, ready=3, updated=3, deployment_current=False))[
        "Progressing"
    ] == (True, "RollingOut")


def test_image_pull_failures_win_over_other_degradations() -> None:
    obs = Observation(
        desired=3,
        replicas=3,
        ready=0,
        updated=3,
        pod_problems=[
            PodProblem("a", "ImagePullBackOff", "no such image"),
            PodProblem("b", "CrashLoopBackOff"),
        ],
        queue_error="queue unreachable",
    )
    degraded = next(v for v in evaluate(obs) if v.type.value == "Degraded")
    assert (degraded.status, degraded.reason) == (True, Reason.IMAGE_PULL_FAILED)
    assert "a: ImagePullBackOff (no such image)" in degraded.message
    assert phase(evaluate(obs)) is AgentPoolPhase.DEGRADED


def test_queue_unreachable_and_crash_loops_are_degraded() -> None:
    assert reasons(Observation(desired=1, replicas=1, ready=1, updated=1, queue_error="down"))[
        "Degraded"
    ] == (
        True,
        "QueueUnreachable",
    )
    crashing = Observation(
        desired=1, replicas=1, updated=1, pod_problems=[PodProblem("a", "CrashLoopBackOff")]
    )
    assert reasons(crashing)["Degraded"] == (True, "AgentsCrashing")


def test_invalid_spec_marks_every_condition() -> None:
    values = evaluate(Observation(desired=0, spec_error="spec.autoscaling: bad"))
    assert {v.reason for v in values} == {Reason.INVALID_SPEC}
    assert phase(values) is AgentPoolPhase.DEGRADED


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = merge_conditions([], evaluate(Observation(desired=3, ready=0)), "T1", generation=1)
    same = merge_conditions(first, evaluate(Observation(desired=3, ready=1)), "T2", generation=1)
    flipped = merge_conditions(
        same, evaluate(Observation(desired=3, replicas=3, ready=3, updated=3)), "T3", generation=2
    )
    ready = {c["type"]: c for c in same}["Ready"]
    assert (ready["lastTransitionTime"], ready["message"]) == ("T1", "1/3 agents ready")
    ready = {c["type"]: c for c in flipped}["Ready"]
    assert (ready["status"], ready["lastTransitionTime"], ready["observedGeneration"]) == ("True", "T3", 2)


def test_pod_problems_come_from_waiting_containers_and_scheduling() -> None:
    pods = [
        {
            "metadata": {"name": "a"},
            "status": {
                "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull", "message": "x"}}}]
            },
        },
        {
            "metadata": {"name": "b"},
            "status": {
                "conditions": [{"type": "PodScheduled", "reason": "Unschedulable", "message": "no cpu"}]
            },
        },
        {"metadata": {"name": "c"}, "status": {"containerStatuses": [{"state": {"running": {}}}]}},
    ]
    assert pod_problems(pods) == [
        PodProblem("a", "ErrImagePull", "x"),
        PodProblem("b", "Unschedulable", "no cpu"),
    ]


def test_status_writes_skip_gauge_only_changes_until_due() -> None:
    old = {"queued": 5, "desiredReplicas": 3}
    assert not status_needs_write(old, {"queued": 6, "desiredReplicas": 3}, gauges_due=False)
    assert status_needs_write(old, {"queued": 6, "desiredReplicas": 3}, gauges_due=True)
    assert status_needs_write(old, {"queued": 5, "desiredReplicas": 4}, gauges_due=False)
    assert not status_needs_write(old, dict(old), gauges_due=True)


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        AgentPoolSpec.model_validate(
            {"role": "r", "image": "i", "handler": {"kind": "echo"}, "concurrency": 0}
        )
    assert spec_error_message(caught.value).startswith("spec.concurrency:")
