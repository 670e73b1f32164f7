"""The Workflow status: its model and CRD schema, the tracker that folds progress events into it, the
batched and rate-limited writer, and the pure decisions of the Workflow controller."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any

import pytest

from codeforge.api import crd
from codeforge.api.workflow import parse_workflow_spec
from codeforge.api.workflow_status import RESULT_INLINE_LIMIT, WorkflowPhase, WorkflowStatus
from codeforge.controller.kstatus import KubeEvent, ObjectRef
from codeforge.controller.workflow.results import ResultStore, bounded_result
from codeforge.controller.workflow.retry import retry_requested
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import (
    EVENTS_PER_WRITE,
    WRITES_IN_FLIGHT,
    StatusWriter,
    TokenBucket,
)
from codeforge.controller.workflow.supervisor import qualified, wants_run
from codeforge.controller.workflow.tracker import WorkflowTracker, invalid_status, pending_status
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowOutcome

SPEC = parse_workflow_spec(
    {
        "steps": [{"name": n, "pool": "work"} for n in ("research", "debate", "implement")],
        "edges": [{"from": "research", "to": "debate"}, {"from": "debate", "to": "implement"}],
    }
)


def event(kind: EventKind, step: str = "", **fields: Any) -> ProgressEvent:
    return ProgressEvent(kind, "wf", step, **fields)


def outcome(status: str, error: str | None = None) -> WorkflowOutcome:
    return WorkflowOutcome("wf", status, {"research": {"ok": True}}, error, [], 1.0)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# -- model and CRD ---------------------------------------------------------------------------------------


def test_the_workflow_crd_has_the_status_schema_and_printer_columns() -> None:
    (workflow,) = [r for r in crd.custom_resources() if r.kind == "Workflow"]
    manifest = crd.crd_manifest(workflow)
    version = manifest["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in WorkflowPhase]
    assert {"progress", "currentStep", "steps", "result", "resultRef", "conditions"} <= set(status)
    assert status["steps"]["x-kubernetes-list-map-keys"] == ["name"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Progress",
        "Step",
        "Age",
        "Message",
    ]
    assert manifest["spec"]["names"]["shortNames"] == ["wf"]


def test_a_rendered_status_validates_against_the_model() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 3)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.apply(event(EventKind.STEP_STARTED, "research", parts=1))
    model = WorkflowStatus.model_validate(tracker.render())
    assert model.phase is WorkflowPhase.RUNNING
    assert model.observed_generation == 3


# -- tracker ---------------------------------------------------------------------------------------------


def test_progress_current_step_and_step_details_follow_the_events() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.apply(event(EventKind.STEP_STARTED, "research", parts=1))
    tracker.apply(event(EventKind.TASK_DISPATCHED, "research", index=0, attempt=0, status="queued"))
    tracker.apply(
        event(
            EventKind.STEP_FINISHED, "research", status="succeeded", attempt=1, duration=0.5, agent="agent-7"
        )
    )
    tracker.apply(event(EventKind.STEP_STARTED, "debate", parts=3))
    tracker.apply(event(EventKind.TASK_DISPATCHED, "debate", index=0, attempt=0))
    tracker.apply(
        event(
            EventKind.ATTEMPT_FAILED, "debate", index=0, attempt=0, message="agent crashed", agent="agent-2"
        )
    )
    tracker.apply(event(EventKind.TASK_DISPATCHED, "debate", index=0, attempt=1))
    status = tracker.render()
    assert status["phase"] == "Running"
    assert status["progress"] == "1/3"
    assert status["currentStep"] == "debate"
    research, debate = status["steps"]
    assert (research["phase"], research["attempts"], research["visits"]) == ("Succeeded", 1, 1)
    assert research["startTime"]
    assert research["finishTime"]
    assert research["pool"] == "work"
    assert research["agent"] == "agent-7"
    assert debate["agent"] == "agent-2"
    assert (debate["phase"], debate["attempts"], debate["parts"]) == ("Running", 2, 3)
    assert debate["message"] == "agent crashed"
    reasons = [t.reason for t in tracker.take_transitions()]
    assert reasons == ["StepStarted", "StepSucceeded", "StepStarted", "StepAttemptFailed"]
    assert conditions(status)["Running"] == ("True", "Running")


def test_the_outcome_finishes_the_status_and_cancels_running_steps() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.apply(event(EventKind.STEP_STARTED, "research"))
    tracker.finish(outcome("failed", "step 'research' failed: boom"), None, None)
    status = tracker.render()
    assert status["phase"] == "Failed"
    assert status["message"] == "step 'research' failed: boom"
    assert status["completionTime"]
    assert status["currentStep"] is None
    assert status["steps"][0]["phase"] == "Cancelled"
    assert conditions(status)["Finished"] == ("True", "Failed")
    assert tracker.take_transitions()[-1].reason == "WorkflowFailed"


def test_a_tracker_continues_from_the_stored_status_after_a_restart() -> None:
    first = WorkflowTracker.from_status(SPEC, {}, 1)
    first.apply(event(EventKind.WORKFLOW_STARTED))
    first.apply(event(EventKind.STEP_STARTED, "research"))
    stored = first.render()
    again = WorkflowTracker.from_status(SPEC, stored, 1)
    again.apply(event(EventKind.WORKFLOW_RESUMED))
    again.apply(event(EventKind.TASK_DISPATCHED, "research", attempt=0, status="reattached"))
    status = again.render()
    assert status["startTime"] == stored["startTime"]
    assert status["steps"][0]["visits"] == 1  # re-attached, not a new visit
    assert status["message"] == "resumed from its checkpoint"
    # lastTransitionTime is kept while a condition's status does not flip
    assert status["conditions"][0]["lastTransitionTime"] == stored["conditions"][0]["lastTransitionTime"]


def test_suspended_shows_as_its_own_phase_and_condition_reason() -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.set_suspended(True)
    status = tracker.render()
    assert status["phase"] == "Suspended"
    assert conditions(status)["Running"] == ("False", "Suspended")
    tracker.set_suspended(False)
    assert tracker.render()["phase"] == "Running"


@pytest.mark.parametrize(("mode", "reason"), [("Stop", "Stopped"), ("Terminate", "Terminated")])
def test_shutdown_shows_while_draining_and_as_the_finished_reason(mode: str, reason: str) -> None:
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    tracker.apply(event(EventKind.WORKFLOW_STARTED))
    tracker.apply(event(EventKind.STEP_STARTED, "research"))
    tracker.take_transitions()
    tracker.set_shutdown(mode)
    assert [t.reason for t in tracker.take_transitions()] == ["Stopping" if mode == "Stop" else "Terminating"]
    draining = tracker.render()
    assert draining["phase"] == "Running"
    if mode == "Stop":
        assert conditions(draining)["Running"] == ("False", "Stopping")
    ended = dataclasses.replace(
        outcome("cancelled", f"{reason.lower()} (spec.shutdown: {mode})"), reason=reason
    )
    tracker.finish(ended, None, None)
    status = tracker.render()
    assert status["phase"] == "Cancelled"
    assert conditions(status)["Finished"] == ("True", reason)
    assert conditions(status)["Running"] == ("False", "Finished")
    assert tracker.take_transitions()[-1].reason == "WorkflowCancelled"


def test_a_stop_is_read_back_from_the_spec_after_a_restart() -> None:
    stopped = SPEC.model_copy(update={"shutdown": "Stop"})
    tracker = WorkflowTracker.from_status(stopped, {"phase": "Running"}, 2)
    assert conditions(tracker.render())["Running"] == ("False", "Stopping")
    done = WorkflowTracker.from_status(stopped, {"phase": "Cancelled"}, 2)
    assert not done.stopping


def test_invalid_and_pending_statuses() -> None:
    message = "spec.edges[0].to: unknown step 'nowhere': use one of a, b or 'END'"
    invalid = invalid_status({}, message, 2)
    assert invalid["phase"] == "Failed"
    assert "spec.edges[0].to" in invalid["message"]
    assert conditions(invalid)["Invalid"] == ("True", "InvalidSpec")
    pending = pending_status(invalid, 3, 3)
    assert pending["phase"] == "Pending"
    assert pending["progress"] == "0/3"
    assert "Invalid" not in conditions(pending)
    assert pending["completionTime"] is None  # null: the merge patch removes it


# -- controller decisions ---------------------------------------------------------------------------------


def test_retry_is_requested_by_a_new_annotation_value_on_a_failed_workflow() -> None:
    failed = {"phase": "Failed", "retryToken": "1"}
    assert retry_requested({"codeforge.ai/retry": "2"}, failed)
    assert not retry_requested({"codeforge.ai/retry": "1"}, failed)  # already acted upon
    assert not retry_requested({}, failed)
    assert not retry_requested({"codeforge.ai/retry": "2"}, {**failed, "phase": "Succeeded"})
    invalid = {**failed, "conditions": [{"type": "Invalid", "status": "True"}]}
    assert not retry_requested({"codeforge.ai/retry": "2"}, invalid)  # fix the spec instead
    assert wants_run({}, {})
    assert wants_run({}, {"phase": "Suspended"})
    assert not wants_run({}, {"phase": "Succeeded"})
    assert wants_run({"codeforge.ai/retry": "2"}, failed)


def test_steps_run_in_the_queues_of_the_workflows_namespace() -> None:
    spec = qualified(
        parse_workflow_spec(
            {
                "steps": [{"name": "a", "pool": "work"}, {"name": "b", "pool": "x/y"}],
                "edges": [{"from": "a", "to": "b"}],
            }
        ),
        "team-a",
    )
    assert [s.pool for s in spec.steps] == ["team-a/work", "x/y"]


async def test_a_large_result_stays_out_of_the_status_and_is_referenced() -> None:
    store, ref = ResultStore(), ObjectRef("team-a", "big", "uid-big")
    small = {"a": "x" * 10}
    assert await bounded_result(store, ref, small) == (small, None)
    large = {"a": "x" * (RESULT_INLINE_LIMIT + 1)}
    inline, reference = await bounded_result(store, ref, large)
    assert inline is None
    assert reference is not None
    assert reference["sizeBytes"] > RESULT_INLINE_LIMIT
    assert await store.get(reference["redisKey"]) is not None


@pytest.mark.redis
async def test_large_results_go_to_redis(redis_url: str) -> None:
    from codeforge.orchestrator.checkpoint import connect_redis

    client = await connect_redis(redis_url)
    try:
        store, ref = ResultStore(client), ObjectRef("team-a", "big", "uid-big-redis")
        _, reference = await bounded_result(store, ref, {"a": "y" * 10_000})
        assert reference is not None
        assert "y" * 100 in (await store.get(reference["redisKey"]) or "")
        await store.delete(reference["redisKey"])
        assert await store.get(reference["redisKey"]) is None
    finally:
        await client.aclose()


def test_settings_from_the_environment() -> None:
    settings = WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_STATUS_INTERVAL": "0.5"})
    assert settings.status_interval == 0.5
    assert settings.writes_per_second == 20.0
    for bad in ("0", "nan", "inf", "-inf"):
        with pytest.raises(ValueError, match=r"CODEFORGE_STATUS_WRITES_PER_SECOND=.*(greater than 0|finite)"):
            WorkflowSettings.from_env({"CODEFORGE_STATUS_WRITES_PER_SECOND": bad})
    assert settings.busy_runs == 32
    assert WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_BUSY_RUNS": "64"}).busy_runs == 64
    for bad in ("0", "0.5", "-3", "many"):
        with pytest.raises(ValueError, match=r"CODEFORGE_WORKFLOW_BUSY_RUNS.*whole number"):
            WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_BUSY_RUNS": bad})
    assert settings.park_after == 0.1
    assert WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_PARK_SECONDS": "2.5"}).park_after == 2.5
    for bad, why in [
        ("0", "greater than 0"),
        ("-1", "greater than 0"),
        ("soon", "expected a number of seconds"),
        ("3601", "at most 3600"),
        ("1e300", "at most 3600"),
        ("nan", "finite"),
        ("inf", "finite"),
    ]:
        with pytest.raises(ValueError, match=f"CODEFORGE_WORKFLOW_PARK_SECONDS={bad!r}: .*{why}"):
            WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_PARK_SECONDS": bad})


# -- writer ----------------------------------------------------------------------------------------------


class Recorder:
    """The API server's side of the writer: records each status patch with its time."""

    def __init__(self) -> None:
        self.patches: list[tuple[float, str, dict[str, Any]]] = []
        self.events: list[tuple[str, KubeEvent]] = []

    async def patch(self, ref: ObjectRef, body: dict[str, Any]) -> None:
        self.patches.append((time.monotonic(), ref.uid, body))

    def post(self, ref: ObjectRef, transition: KubeEvent) -> None:
        self.events.append((ref.uid, transition))


async def test_busy_workflows_are_written_at_most_once_per_interval_and_under_the_global_cap() -> None:
    api = Recorder()
    writer = StatusWriter(api.patch, api.post, interval=0.5, writes_per_second=100)
    trackers = []
    for i in range(200):
        tracker = WorkflowTracker.from_status(SPEC, {}, 1)
        writer.track(ObjectRef("ns", f"wf{i}", f"uid{i}"), tracker)
        trackers.append(tracker)
    loop = asyncio.create_task(writer.run())
    started = time.monotonic()
    try:
        attempt = 0
        while time.monotonic() - started < 1.5:  # every workflow emits ~100 status changes per second
            attempt += 1
            for tracker in trackers:
                tracker.apply(event(EventKind.TASK_DISPATCHED, "research", attempt=attempt))
            writer.changed()
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
    elapsed = time.monotonic() - started
    # The global cap: 100/s plus one burst of 100.
    assert len(api.patches) <= 100 * elapsed + 100 + 5
    per_workflow: dict[str, list[float]] = {}
    for at, uid, _ in api.patches:
        per_workflow.setdefault(uid, []).append(at)
    gaps = [b - a for times in per_workflow.values() for a, b in itertools.pairwise(times)]
    assert gaps
    assert min(gaps) >= 0.5 - 0.02
    assert len(per_workflow) == 200  # nobody starves: oldest-written first


async def test_an_unchanged_status_is_not_written_and_flush_writes_at_once() -> None:
    api = Recorder()
    writer = StatusWriter(api.patch, api.post, interval=60, writes_per_second=10)
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    writer.track(ObjectRef("ns", "wf", "uid"), tracker)
    loop = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.05)
        assert len(api.patches) == 1
        tracker.apply(event(EventKind.WORKFLOW_STARTED))
        writer.changed()
        await asyncio.sleep(0.05)
        assert len(api.patches) == 1  # within the interval
        tracker.finish(outcome("succeeded"), {"research": {"ok": True}}, None)
        assert await writer.flush("uid", timeout=2)  # final statuses skip the interval
        assert api.patches[-1][2]["status"]["phase"] == "Succeeded"
        assert [t.reason for _, t in api.events] == ["WorkflowSucceeded"]
    finally:
        loop.cancel()


async def test_a_burst_of_transitions_is_summed_up_in_one_event() -> None:
    api = Recorder()
    writer = StatusWriter(api.patch, api.post, interval=0.01, writes_per_second=100, step_events=True)
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    writer.track(ObjectRef("ns", "wf", "uid"), tracker)
    for name in ("research", "debate", "implement"):
        tracker.apply(event(EventKind.STEP_STARTED, name))
        tracker.apply(event(EventKind.STEP_FINISHED, name, status="succeeded"))
    await writer.write_due()
    reasons = [t.reason for _, t in api.events]
    assert len(reasons) == EVENTS_PER_WRITE
    assert reasons[-2] == "StepTransitions"
    assert reasons[-1] == "StepSucceeded"


async def test_slow_patches_of_different_workflows_overlap_under_the_cap() -> None:
    """The API server's latency must not bound the rate: patches of different Workflows are in flight at
    once (WRITES_IN_FLIGHT), each Workflow's one at a time."""
    in_flight: set[str] = set()
    most = [0]

    async def slow_patch(ref: ObjectRef, body: dict[str, Any]) -> None:
        assert ref.uid not in in_flight
        in_flight.add(ref.uid)
        most[0] = max(most[0], len(in_flight))
        await asyncio.sleep(0.1)
        in_flight.discard(ref.uid)

    writer = StatusWriter(slow_patch, interval=0.01, writes_per_second=1000)
    for i in range(2 * WRITES_IN_FLIGHT):
        writer.track(ObjectRef("ns", f"wf{i}", f"uid{i}"), WorkflowTracker.from_status(SPEC, {}, 1))
    started = time.monotonic()
    assert await writer.write_due() == 2 * WRITES_IN_FLIGHT
    assert time.monotonic() - started < 0.1 * 2 * WRITES_IN_FLIGHT / 2  # one at a time would take 1.6 s
    assert most[0] == WRITES_IN_FLIGHT


async def test_routine_step_transitions_are_events_only_when_asked_for() -> None:
    """By default a step's start and success are in the status only; its failures and the Workflow's end
    are Events."""
    api = Recorder()
    writer = StatusWriter(api.patch, api.post, interval=0.01, writes_per_second=100)
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    writer.track(ObjectRef("ns", "wf", "uid"), tracker)
    tracker.apply(event(EventKind.STEP_STARTED, "research"))
    tracker.apply(event(EventKind.STEP_FINISHED, "research", status="succeeded"))
    tracker.apply(event(EventKind.STEP_STARTED, "debate"))
    tracker.apply(event(EventKind.ATTEMPT_FAILED, "debate", index=0, attempt=0, message="agent crashed"))
    tracker.finish(outcome("failed", "step 'debate' failed"), None, None)
    await writer.write_due()
    assert [t.reason for _, t in api.events] == ["StepAttemptFailed", "WorkflowFailed"]
    assert [s["phase"] for s in api.patches[-1][2]["status"]["steps"]][:1] == ["Succeeded"]
    assert WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_STEP_EVENTS": "true"}).step_events
    assert not WorkflowSettings.from_env({}).step_events


async def test_the_token_bucket_paces_acquisitions() -> None:
    bucket = TokenBucket(rate=50)
    started = time.monotonic()
    for _ in range(75):  # 50 from the burst, 25 at 50/s
        await bucket.acquire()
    assert 0.4 <= time.monotonic() - started < 1.5
