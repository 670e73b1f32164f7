"""The run of one Workflow inside the operator (`supervise`: a task the dispatcher starts, no Kopf daemon)
and what its deletion does (`cleanup`), as plain functions.

`supervise()` starts or resumes the LangGraph run (thread id = the Workflow's uid; the orchestrator resumes
from the Redis checkpoint and re-attaches in-flight tasks by their deterministic ids) and feeds its progress
events to a `WorkflowTracker` (which wakes the `StatusWriter` that batches them into status patches). It
tells apart how it is stopped:

- the Workflow was deleted (`cleanup` cancels its `WorkflowHandle`): the run cancels its outstanding tasks
  in the queue and the status says Cancelled;
- the operator stops (its task is cancelled, `WorkflowRegistry.close`): only stop waiting; the tasks keep
  running in the agents and the next operator (a restart, or the standby taking the lead) re-attaches to
  them from the checkpoint.

Settings: `workflow/settings.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.api.outcome import Outcome
from codeforge.api.workflow import Shutdown, WorkflowSpec, WorkflowSpecError
from codeforge.api.workflow_status import StepPhase, WorkflowPhase
from codeforge.controller.kstatus import ObjectRef, condition_true
from codeforge.controller.services import Logger, OperatorServices
from codeforge.controller.workflow import metrics as workflow_metrics
from codeforge.controller.workflow.pools import RECHECK_CAP_SECONDS, RECHECK_SECONDS
from codeforge.controller.workflow.registry import (
    CANCEL_WAIT_SECONDS,
    LiveWorkflow,
    WorkflowRegistry,
    landmark,
)
from codeforge.controller.workflow.results import bounded_result, result_key
from codeforge.controller.workflow.retry import RETRY_ANNOTATION, retry_requested
from codeforge.controller.workflow.tracker import ConditionType, WorkflowTracker
from codeforge.orchestrator import (
    EventKind,
    ProgressEvent,
    RewindError,
    WorkflowHandle,
    WorkflowOutcome,
    task_id,
)
from codeforge.orchestrator.shutdown import STOPPED, TERMINATE_MESSAGE
from codeforge.queue import TaskQueue

#: Wait before reconnecting to the queue / checkpoint store, or restarting a run that raised.
RETRY_SECONDS: Final = 5.0
logger = logging.getLogger(__name__)


def qualified(spec: WorkflowSpec, namespace: str) -> WorkflowSpec:
    """Steps name AgentPools of the Workflow's namespace; their queues are `namespace/pool`."""
    steps = [
        s if "/" in s.pool else s.model_copy(update={"pool": f"{namespace}/{s.pool}"}) for s in spec.steps
    ]
    return spec.model_copy(update={"steps": steps})


@dataclass(frozen=True, slots=True)
class WatchedWorkflow:
    """One watch event of a Workflow: what the dispatcher decides on, and what a run starts from."""

    ref: ObjectRef
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    annotations: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)  # workflow.labels in fairShare.concurrencyKey
    deleting: bool = False  # deletionTimestamp set: the finalizer's `cleanup` stops the run
    gone: bool = False  # the DELETED event


def wants_run(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """Whether the Workflow needs a run: not finished yet, or a retry was asked for."""
    phase = status.get("phase")
    if not phase or not WorkflowPhase(phase).finished:
        return True
    return retry_requested(annotations, status)


async def first_of(*aws: Awaitable[Any]) -> None:
    """Wait until any of the awaitables is done; cancel the helpers made here, never a future passed in."""
    made = [a for a in aws if not asyncio.isfuture(a)]
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, source in zip(tasks, aws, strict=True):
            if source in made:
                task.cancel()


async def supervise(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    obj: WatchedWorkflow,
    live: LiveWorkflow,
    log: Logger,
) -> None:
    """Run (or resume, or retry) one Workflow until it ends, it is deleted (`live.control` cancelled), or
    this task is cancelled (the operator stops: its tasks stay with the agents, the next operator resumes)."""
    uid = obj.ref.uid
    tracker: WorkflowTracker | None = None
    try:
        written = workflows.parsed(uid, obj.spec)  # valid: `dispatcher.observe` checked (and parsed) it
        spec = qualified(written, obj.ref.namespace)
        tracker = WorkflowTracker.from_status(written, obj.status, obj.generation)
        tracker.suspended = live.control.suspended  # spec.suspend may have changed since the event
        live.tracker = tracker
        workflows.start_writer()
        workflows.writer.track(obj.ref, tracker)
        await _drive(workflows, services, obj, spec, live, tracker, log)
    except WorkflowSpecError:
        return  # the dispatcher reports an invalid spec
    finally:
        live.done.set()
        # Marked ended before it leaves `runs`: an event seen while the last status is written is stale.
        workflows.ended[uid] = None if tracker is None else landmark(_final_status(tracker))
        if workflows.runs.get(uid) is live:
            del workflows.runs[uid]
        workflows.writer.release(uid)  # untracked once its last status is written


def _final_status(tracker: WorkflowTracker) -> dict[str, Any]:
    """The fields of the status the run ends with that `landmark` compares (as `tracker.render` has them)."""
    phase = tracker.effective_phase
    return {
        "phase": phase.value,
        "retryToken": tracker.retry_token,
        "completionTime": tracker.completion_time if phase.finished else None,
    }


async def _drive(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    obj: WatchedWorkflow,
    spec: WorkflowSpec,
    live: LiveWorkflow,
    tracker: WorkflowTracker,
    log: Logger,
) -> None:
    uid, control = obj.ref.uid, live.control
    busy = [0.0]  # agent seconds on this run's tasks, for the coordination efficiency

    def emit(event: ProgressEvent) -> None:
        if event.kind is EventKind.TASK_FINISHED:  # metrics only: nothing for the status
            busy[0] += event.duration or 0.0
            workflow_metrics.observe_task(event.duration, event.latency)
            return
        if event.kind is EventKind.TASK_DISPATCHED and event.latency is not None:
            workflow_metrics.STEP_DISPATCH_SECONDS.observe(event.latency)
        tracker.apply(event)
        if event.kind is EventKind.STEP_FINISHED and event.duration is not None:
            workflow_metrics.STEP_SECONDS.labels(outcome=event.status or "unknown").observe(event.duration)

    if tracker.phase is WorkflowPhase.PENDING and not await _pools_ready(
        workflows, services, spec, tracker, control, log
    ):
        return
    while not control.cancelled.is_set():
        try:
            runner = await workflows.connect(services, log)
            if retry_requested(live.annotations, obj.status) and tracker.phase is WorkflowPhase.FAILED:
                token = live.annotations.get(RETRY_ANNOTATION)
                try:
                    if condition_true(obj.status.get("conditions"), ConditionType.EXPIRED):
                        raise RewindError("its checkpoints were removed when its TTL passed (Expired)")
                    step = await runner.rewind(uid, spec)
                except RewindError as exc:
                    tracker.refuse_retry(token, str(exc))
                    return
                tracker.begin_retry(token, step)
            if spec.shutdown is Shutdown.TERMINATE:  # after a restart: what the earlier run dispatched
                await _cancel_from_status(runner.queue, obj.ref, obj.status, TERMINATE_MESSAGE)
        except Exception as exc:  # Redis down (queue, checkpoints) or any fault: report it, retry later
            tracker.set_degraded(str(exc))
            log.warning("Workflow %s waits for the queue: %s", obj.ref.key, exc)
            await first_of(control.cancelled.wait(), asyncio.sleep(RETRY_SECONDS))
            continue
        tracker.set_degraded(None)
        busy[0] = 0.0
        # One line per run (and per resumption): which operator replica runs which Workflow.
        log.info(
            "Workflow %s run %s",
            obj.ref.key,
            "starts" if tracker.phase is WorkflowPhase.PENDING else "resumes",
        )
        try:
            # Cancelling this task (operator shutdown) cancels the run, which leaves its tasks to the agents;
            # a deletion cancels `control`, and the run cancels its outstanding tasks and returns.
            outcome = await runner.run(
                uid,
                spec,
                emit=emit,
                control=control,
                name=obj.ref.name,
                namespace=obj.ref.namespace,
                labels=obj.labels,
            )
        except Exception as exc:  # Redis went away mid-run (or any fault): resume from the checkpoint
            workflow_metrics.RUN_ERRORS.inc()
            tracker.set_degraded(f"run interrupted, resuming: {exc}")
            log.warning("Workflow %s run interrupted, resuming in %ss: %s", obj.ref.key, RETRY_SECONDS, exc)
            await first_of(control.cancelled.wait(), asyncio.sleep(RETRY_SECONDS))
            continue
        log.info(
            "Workflow %s run ended %s%s (resumed: %s): %s",
            obj.ref.key, outcome.status, f", reason {outcome.reason}" if outcome.reason else "",
            outcome.resumed, outcome.error or "",
        )  # fmt: skip
        await _finish(workflows, obj, live, tracker, outcome, busy[0])
        return
    _end(tracker, _cancelled(uid, control), None, None, busy[0])  # deleted while waiting for the queue


def _cancelled(uid: str, control: WorkflowHandle) -> WorkflowOutcome:
    return WorkflowOutcome(uid, Outcome.CANCELLED, {}, f"cancelled: {control.reason}", [], 0.0)


async def _pools_ready(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    spec: WorkflowSpec,
    tracker: WorkflowTracker,
    control: WorkflowHandle,
    log: Logger,
) -> bool:
    """Wait (Pending, condition PoolNotFound) until every pool the steps name exists; False if cancelled.
    A Workflow stopped meanwhile (spec.shutdown) starts at once: its run ends before dispatching anything."""
    delay = RECHECK_SECONDS
    while not control.cancelled.is_set():
        if spec.shutdown is not None or control.shutdown is not None:
            return True
        try:
            missing = await workflows.pools.missing(services.api(), spec)
        except Exception as exc:  # the API server is unreachable: start anyway, the tasks queue meanwhile
            log.warning("cannot look up the Workflow's AgentPools: %s", exc)
            return True
        tracker.set_missing_pools(missing)
        if not missing:
            return True
        await first_of(control.cancelled.wait(), asyncio.sleep(delay), control.gate.changed.wait())
        delay = min(delay * 2, RECHECK_CAP_SECONDS)
    return False


def _end(
    tracker: WorkflowTracker, outcome: WorkflowOutcome, result: Any, ref: dict[str, Any] | None, busy: float
) -> None:
    """The run's outcome into the tracker; the first time the Workflow ends, into the metrics too."""
    ended_before = tracker.phase.finished
    tracker.finish(outcome, result, ref)
    if not ended_before and tracker.phase.finished:
        resumed_from = tracker.start_time if outcome.resumed else None
        workflow_metrics.observe_finished(tracker.phase.value, outcome.duration, busy, resumed_from)


async def _finish(
    workflows: WorkflowRegistry,
    obj: WatchedWorkflow,
    live: LiveWorkflow,
    tracker: WorkflowTracker,
    outcome: WorkflowOutcome,
    busy: float,
) -> None:
    result, ref = None, None
    if outcome.status == Outcome.SUCCEEDED or outcome.reason == STOPPED:  # a stopped run's steps finished
        result, ref = await bounded_result(workflows.results, obj.ref, outcome.results)
    _end(tracker, outcome, result, ref, busy)
    # A retry asked for while the run was going is consumed now: only a new token retries the next failure.
    tracker.retry_token = live.annotations.get(RETRY_ANNOTATION) or tracker.retry_token
    await workflows.writer.flush(obj.ref.uid)


async def cleanup(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    ref: ObjectRef,
    status: Mapping[str, Any],
    log: Logger,
) -> str | None:
    """The Workflow is being deleted: cancel what still runs, then remove its step refs (through an agent,
    bounded in time), its checkpoints and its result copy. Returns why step refs were kept, if they were."""
    active = workflows.runs.get(ref.uid)
    if active is not None:
        active.control.cancel("the Workflow was deleted")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.done.wait(), CANCEL_WAIT_SECONDS)
    runner = await workflows.connect(services, log)  # Unavailable: the finalizer waits for the store
    if active is None:
        await _cancel_from_status(runner.queue, ref, status)
    refs = await runner.forget(ref.uid, ref_cleanup_timeout=workflows.settings.ref_cleanup_timeout)
    if refs.status == "deleted":
        log.info("deleted %d step ref(s) under %s", refs.deleted, refs.prefix)
    kept = None
    if refs.status not in ("none", "deleted"):
        kept = f"step refs under {refs.prefix} not deleted: {refs.message}"
        log.warning("%s", kept)
    await workflows.results.delete(result_key(ref.uid))
    workflow_metrics.forget(ref.uid)
    return kept


async def _cancel_from_status(
    queue: TaskQueue, ref: ObjectRef, status: Mapping[str, Any], reason: str = "the Workflow was deleted"
) -> None:
    """No run here (deleted, or terminated, while no operator ran it): cancel the tasks the status says are
    in flight."""
    for step in status.get("steps") or []:
        pool = str(step.get("pool") or "")
        if step.get("phase") not in (StepPhase.RUNNING, StepPhase.RETRYING) or not pool:
            continue
        pool = pool if "/" in pool else f"{ref.namespace}/{pool}"
        attempt = max(int(step.get("attempts") or 1) - 1, 0)
        for index in range(int(step.get("parts") or 1)):
            tid = task_id(ref.uid, step["name"], int(step.get("visits") or 1), index, attempt)
            with contextlib.suppress(Exception):  # best effort: it may have finished meanwhile
                await queue.cancel(pool, tid, reason)
