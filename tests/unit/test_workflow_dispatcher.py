"""The Workflow dispatcher's decisions on watch events (which runs start, what is reported), and the status
writer's cost with many tracked Workflows. The runs themselves are covered by test_workflow_handlers_kmock.py
(a real Kopf operator) and the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from codeforge.api.workflow import parse_workflow_spec
from codeforge.controller.config import OperatorConfig
from codeforge.controller.kstatus import ObjectRef
from codeforge.controller.services import OperatorServices
from codeforge.controller.workflow.dispatcher import WatchedWorkflow, observe
from codeforge.controller.workflow.registry import WorkflowRegistry, landmark
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.controller.workflow.tracker import WorkflowTracker
from codeforge.orchestrator import EventKind, ProgressEvent

LOG = logging.getLogger("test")
REF = ObjectRef("team-a", "wf", "uid-wf")
GOOD = {
    "steps": [{"name": "one", "pool": "p"}, {"name": "two", "pool": "p"}],
    "edges": [{"from": "one", "to": "two"}],
}
BAD = {**GOOD, "edges": [{"from": "one", "to": "nowhere"}]}


SPEC = parse_workflow_spec(GOOD)


class Recorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def patch(self, ref: ObjectRef, body: dict[str, Any]) -> None:
        self.patches.append((ref.uid, body))


def registry() -> WorkflowRegistry:
    return WorkflowRegistry(settings=WorkflowSettings(), writer=StatusWriter(Recorder().patch))


def seen(
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    **fields: Any,
) -> WatchedWorkflow:
    return WatchedWorkflow(REF, 1, spec, status or {}, annotations or {}, **fields)


async def test_an_invalid_spec_is_reported_once_and_a_fixed_one_goes_back_to_pending() -> None:
    workflows, services = registry(), OperatorServices(OperatorConfig())
    first = await observe(workflows, services, seen(BAD), LOG)
    assert first.status is not None
    assert first.status["phase"] == "Failed"
    assert first.invalid is not None
    assert "spec.edges[0].to" in first.invalid
    # The next event carries the reported status: nothing more to write or post, and no run.
    again = await observe(workflows, services, seen(BAD, first.status), LOG)
    assert again.status is None
    assert again.invalid is None
    assert not workflows.runs
    fixed = await observe(workflows, services, seen(GOOD, first.status), LOG)
    assert fixed.status is not None
    assert fixed.status["phase"] == "Pending"
    assert not workflows.runs  # the run starts on the event that shows Pending


async def test_a_run_that_ended_here_is_not_started_again_by_stale_events() -> None:
    workflows, services = registry(), OperatorServices(OperatorConfig())
    final = {"phase": "Failed", "retryToken": "1", "completionTime": "2026-12-02T10:00:00Z"}
    workflows.ended[REF.uid] = landmark(final)
    running = {"phase": "Running", "retryToken": "1", "conditions": []}
    retry = {"codeforge.ai/retry": "2"}
    stale = seen(GOOD, running, annotations=retry)
    assert (await observe(workflows, services, stale, LOG)).status is None
    assert not workflows.runs  # the event still shows Running: the final status has not landed yet
    earlier = {**final, "completionTime": "2026-12-02T09:00:00Z"}  # the failure before the last retry
    await observe(workflows, services, seen(GOOD, earlier, annotations=retry), LOG)
    assert not workflows.runs
    # The final status and a new retry token in one (batched) event: the retry starts.
    await observe(workflows, services, seen(GOOD, final, annotations=retry), LOG)
    assert REF.uid not in workflows.ended
    assert REF.uid in workflows.runs
    workflows.runs[REF.uid].control.cancel("test over")
    task = workflows.runs[REF.uid].task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await observe(workflows, services, seen(GOOD, {"phase": "Succeeded"}, gone=True), LOG)
    assert REF.uid not in workflows.checked  # nothing kept of a deleted Workflow
    await workflows.close()


async def test_a_deleting_workflow_is_not_started() -> None:
    workflows, services = registry(), OperatorServices(OperatorConfig())
    await observe(workflows, services, seen(GOOD, deleting=True), LOG)
    assert not workflows.runs


async def test_changes_within_the_interval_do_not_make_the_writer_rescan_every_workflow() -> None:
    """2,000 Workflows changing 50 times a second each, interval 60 s: after the first writes, the writer
    loop sleeps until one is due instead of waking (and scanning all of them) on every change."""
    api = Recorder()
    writer = StatusWriter(api.patch, interval=60, writes_per_second=1e6)
    trackers = []
    for i in range(2000):
        tracker = WorkflowTracker.from_status(SPEC, {}, 1)
        writer.track(ObjectRef("ns", f"wf{i}", f"uid{i}"), tracker)
        trackers.append(tracker)
    rounds = 0
    write_due = writer.write_due

    async def counted() -> int:
        nonlocal rounds
        rounds += 1
        return await write_due()

    writer.write_due = counted  # type: ignore[method-assign]
    loop = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.2)
        assert len(api.patches) == 2000  # the first status of each
        before = rounds
        for attempt in range(25):
            for tracker in trackers:
                tracker.apply(ProgressEvent(EventKind.TASK_DISPATCHED, "wf", "one", attempt=attempt))
            await asyncio.sleep(0.02)
        assert rounds - before <= 2, rounds - before
        assert len(api.patches) == 2000  # within the interval
    finally:
        loop.cancel()


async def test_an_ended_run_keeps_its_last_status_until_it_is_written() -> None:
    """The run ended while the writer is behind: its final status is written later, never dropped."""
    api = Recorder()
    writer = StatusWriter(api.patch, interval=60, writes_per_second=1e6)
    tracker = WorkflowTracker.from_status(SPEC, {}, 1)
    writer.track(REF, tracker)
    await writer.write_due()
    tracker.apply(ProgressEvent(EventKind.WORKFLOW_STARTED, "wf"))
    writer.release(REF.uid)
    assert len(api.patches) == 1  # behind: not written yet, still tracked
    await writer.write_due()  # released entries are urgent: the interval does not hold them
    assert api.patches[-1][1]["status"]["phase"] == "Running"
    tracker.apply(ProgressEvent(EventKind.STEP_STARTED, "wf", "one"))
    await writer.write_due()
    assert len(api.patches) == 2  # written, then untracked


async def test_a_run_starts_from_the_spec_the_dispatcher_parsed_and_a_changed_spec_is_parsed_again() -> None:
    workflows, services = registry(), OperatorServices(OperatorConfig())
    await observe(workflows, services, seen(GOOD, {"phase": "Succeeded"}), LOG)  # checked, no run
    parsed = workflows.checked[REF.uid][2]
    assert parsed is not None
    assert workflows.parsed(REF.uid, dict(GOOD)) is parsed  # not parsed a second time
    changed = {**GOOD, "input": {"n": 2}}
    assert workflows.parsed(REF.uid, changed) is not parsed
    assert workflows.parsed(REF.uid, changed).input == {"n": 2}
    await observe(workflows, services, seen(BAD, {"phase": "Succeeded"}), LOG)
    assert workflows.checked[REF.uid][2] is None  # an invalid spec keeps nothing parsed
