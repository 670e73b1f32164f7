"""Workflow runs inside the operator: one `WorkflowRunner` per process, one run per Workflow (a Kopf daemon).

`drive()` is what the Workflow daemon does, kept here as a plain function: start or resume the LangGraph run
(thread id = the Workflow's uid; the orchestrator resumes from the Redis checkpoint and re-attaches in-flight
tasks by their deterministic ids), feed its progress events to a `WorkflowTracker`, let the `StatusWriter`
batch them into status patches, and, when Kopf stops the daemon, tell apart:

- the Workflow was deleted: cancel the run, which cancels its outstanding tasks in the queue;
- the operator stops or pauses (restart, leader hand-over): only stop waiting; the tasks keep running in
  the agents and the next operator re-attaches to them from the checkpoint.

When the run has ended the daemon stays (idle) until its filter no longer matches (the final status landed),
because Kopf never restarts a daemon that returned by itself, and a retry needs this daemon to start again.

Configuration (environment): CODEFORGE_WORKFLOW_STATUS_INTERVAL (seconds between status writes of one
Workflow, default 2), CODEFORGE_STATUS_WRITES_PER_SECOND (all Workflows together, default 20),
CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT (how long a deletion waits for an agent to delete the run's step refs in
its repository, default 30; the cleanup task stays queued after that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from codeforge.api.workflow import WorkflowSpec, WorkflowSpecError, parse_workflow_spec
from codeforge.api.workflow_status import RESULT_INLINE_LIMIT, StepPhase, WorkflowPhase, encoded_size
from codeforge.controller import workflow_metrics
from codeforge.controller.config import ConfigError
from codeforge.controller.runtime import Logger, Runtime
from codeforge.controller.workflow_retry import RETRY_ANNOTATION, RetryError, rewind_to_failed_step
from codeforge.controller.workflow_status_writer import StatusWriter, WorkflowRef
from codeforge.controller.workflow_tracker import ConditionType, WorkflowTracker
from codeforge.orchestrator import (
    EventKind,
    ProgressEvent,
    RunControl,
    WorkflowOutcome,
    WorkflowRunner,
    task_id,
)
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver, open_checkpointer
from codeforge.queue import QueueError, TaskQueue

JSON = dict[str, Any]
#: Wait before reconnecting to the queue / checkpoint store, or restarting a run that raised.
RETRY_SECONDS: Final = 5.0
#: How often the queue is probed while Workflows run (the queue itself rides out outages by retrying, so
#: without a probe a run would wait silently), and how long an answer may take.
PROBE_SECONDS: Final = 5.0
PROBE_TIMEOUT: Final = 3.0
#: How long a deletion waits for a cancelled run to cancel its tasks.
CANCEL_WAIT_SECONDS: Final = 20.0
logger = logging.getLogger(__name__)


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be greater than 0")
    return value


@dataclass(frozen=True, slots=True)
class WorkflowSettings:
    status_interval: float = 2.0
    writes_per_second: float = 20.0
    #: How long a deletion waits for an agent to delete the run's step refs (then it goes on without).
    ref_cleanup_timeout: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkflowSettings:
        env = os.environ if env is None else env
        return cls(
            status_interval=_positive(env, "CODEFORGE_WORKFLOW_STATUS_INTERVAL", 2.0),
            writes_per_second=_positive(env, "CODEFORGE_STATUS_WRITES_PER_SECOND", 20.0),
            ref_cleanup_timeout=_positive(env, "CODEFORGE_WORKSPACE_CLEANUP_TIMEOUT", 30.0),
        )


class Unavailable(Exception):
    """The queue or the checkpoint store cannot be reached (retried with a pause)."""


def qualified(spec: WorkflowSpec, namespace: str) -> WorkflowSpec:
    """Steps name AgentPools of the Workflow's namespace; their queues are `namespace/pool`."""
    steps = [
        s if "/" in s.pool else s.model_copy(update={"pool": f"{namespace}/{s.pool}"}) for s in spec.steps
    ]
    return spec.model_copy(update={"steps": steps})


class ResultStore:
    """Where results too large for the status go: a Redis string (or process memory with memory://)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._memory: dict[str, str] = {}

    @staticmethod
    def key(ref: WorkflowRef) -> str:
        return f"cf:wf:{{{ref.uid}}}:result"

    async def put(self, key: str, text: str) -> None:
        if self._client is None:
            self._memory[key] = text
        else:
            await self._client.set(key, text)

    async def get(self, key: str) -> str | None:
        if self._client is None:
            return self._memory.get(key)
        value = await self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    async def delete(self, key: str) -> None:
        if self._client is None:
            self._memory.pop(key, None)
        else:
            await self._client.delete(key)


@dataclass
class ActiveRun:
    control: RunControl
    tracker: WorkflowTracker
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class WorkflowRuntime:
    """Operator-wide state of the Workflow controller (in Kopf's memo as `memo.workflows`)."""

    settings: WorkflowSettings
    writer: StatusWriter
    runs: dict[str, ActiveRun] = field(default_factory=dict)
    runner: WorkflowRunner | None = None
    results: ResultStore = field(default_factory=ResultStore)
    writer_task: asyncio.Task[None] | None = None
    probe_task: asyncio.Task[None] | None = None

    async def connect(self, runtime: Runtime, log: Logger) -> WorkflowRunner:
        """The runner on the operator's queue, with its checkpointer (opened once); Unavailable if down."""
        queue: TaskQueue | None = await runtime.connected_queue(log)
        if queue is None:
            raise Unavailable(runtime.queue_error)
        if self.runner is None or self.runner.queue is not queue:
            url = runtime.config.queue_url
            checkpointer: BaseCheckpointSaver[Any]
            if url.startswith("memory://"):
                checkpointer, self.results = InMemorySaver(), ResultStore()
            else:
                try:
                    saver = await open_checkpointer(url)
                except QueueError as exc:
                    raise Unavailable(f"checkpoint store unreachable: {exc}") from None
                checkpointer, self.results = saver, ResultStore(saver.client)
            self.runner = WorkflowRunner(queue, checkpointer)
        return self.runner

    def start_writer(self) -> None:
        """Started from the first daemon, not at startup: the writer posts Events through Kopf, whose
        event queue is reachable only from tasks spawned by the operator's processing (a context var)."""
        if self.writer_task is None or self.writer_task.done():
            self.writer_task = asyncio.create_task(self.writer.run(), name="workflow-status-writer")
        if self.probe_task is None or self.probe_task.done():
            self.probe_task = asyncio.create_task(self.probe_queue(), name="workflow-queue-probe")

    async def probe_queue(self, every: float = PROBE_SECONDS) -> None:
        """While runs are active, ping the queue: an outage shows as Degraded/QueueUnreachable on every
        running Workflow (the runs wait for Redis meanwhile, and carry on once it is back)."""
        while True:
            await asyncio.sleep(every)
            if self.runner is None or not self.runs:
                continue
            try:
                await asyncio.wait_for(self.runner.queue.ping(), PROBE_TIMEOUT)
                problem = None
            except Exception as exc:  # any failure to answer is an outage to report
                problem = f"queue unreachable: {exc or f'no answer within {PROBE_TIMEOUT:g}s'}"
            for run in list(self.runs.values()):
                if problem is not None or run.tracker.degraded_by_probe:
                    run.tracker.set_degraded(problem)
                    run.tracker.degraded_by_probe = problem is not None
            self.writer.changed()

    async def close(self) -> None:
        for task in (self.writer_task, self.probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.runner is not None and isinstance(self.runner.checkpointer, RedisCheckpointSaver):
            with contextlib.suppress(Exception):
                await self.runner.checkpointer.aclose()

    def set_suspended(self, uid: str, suspended: bool) -> bool:
        """Pause or resume dispatching of a running Workflow; False when no run is active here."""
        run = self.runs.get(uid)
        if run is None:
            return False
        if suspended:
            run.control.suspend()
        else:
            run.control.resume()
        run.tracker.set_suspended(suspended)
        self.writer.changed()
        return True


@dataclass(frozen=True, slots=True)
class WorkflowObject:
    """What the daemon reads from the Workflow (Kopf's live body keeps annotations fresh)."""

    ref: WorkflowRef
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    annotations: Callable[[], Mapping[str, str]]


def retry_requested(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """A Failed (not invalid) Workflow whose retry annotation carries a token not acted upon yet."""
    token = annotations.get(RETRY_ANNOTATION)
    if not token or token == status.get("retryToken") or status.get("phase") != WorkflowPhase.FAILED:
        return False
    return not any(
        c.get("type") == ConditionType.INVALID and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def wants_run(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """The daemon filter: not finished yet, or a retry was asked for."""
    phase = status.get("phase")
    if not phase or not WorkflowPhase(phase).finished:
        return True
    return retry_requested(annotations, status)


async def _bounded_result(
    store: ResultStore, ref: WorkflowRef, results: dict[str, Any]
) -> tuple[Any, JSON | None]:
    """The result for the status: inline when small, else a reference to a Redis copy."""
    size = encoded_size(results)
    if size <= RESULT_INLINE_LIMIT:
        return results, None
    key = ResultStore.key(ref)
    await store.put(key, json.dumps(results, default=str))
    return None, {"redisKey": key, "sizeBytes": size}


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until any of the awaitables is done; cancel the helpers made here, never a future passed in."""
    made = [a for a in aws if not asyncio.isfuture(a)]
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, source in zip(tasks, aws, strict=True):
            if source in made:
                task.cancel()


async def drive(
    workflows: WorkflowRuntime,
    runtime: Runtime,
    obj: WorkflowObject,
    stopped: Any,  # kopf.DaemonStopped: truthy once set, `await stopped.wait()`, `.reason`
    deleted: Callable[[], bool],
    log: Logger,
) -> None:
    """Run (or resume, or retry) one Workflow until it ends or Kopf stops the daemon."""
    try:
        written = parse_workflow_spec(dict(obj.spec))
    except WorkflowSpecError:
        await stopped.wait()  # the create/update handler reports the invalid spec
        return
    spec = qualified(written, obj.ref.namespace)
    uid = obj.ref.uid
    tracker = WorkflowTracker.from_status(written, obj.status, obj.generation)
    workflows.start_writer()
    control = RunControl()
    if spec.suspend:
        control.suspend()
    active = ActiveRun(control, tracker)
    workflows.runs[uid] = active
    workflows.writer.track(obj.ref, tracker)

    busy = [0.0]  # agent seconds on this run's tasks, for the coordination efficiency

    def emit(event: ProgressEvent) -> None:
        if event.kind is EventKind.TASK_FINISHED:  # metrics only: nothing for the status
            busy[0] += event.duration or 0.0
            workflow_metrics.observe_task(event.duration, event.latency)
            return
        tracker.apply(event)
        if event.kind is EventKind.STEP_FINISHED and event.duration is not None:
            workflow_metrics.STEP_SECONDS.labels(outcome=event.status or "unknown").observe(event.duration)
        workflows.writer.changed()

    try:
        while not stopped:
            try:
                runner = await workflows.connect(runtime, log)
                if retry_requested(obj.annotations(), obj.status) and tracker.phase is WorkflowPhase.FAILED:
                    token = obj.annotations().get(RETRY_ANNOTATION)
                    try:
                        step = await rewind_to_failed_step(runner, uid, spec)
                    except RetryError as exc:
                        tracker.retry_token, tracker.message = token, f"retry refused: {exc}"
                        tracker.version += 1
                        await workflows.writer.flush(uid)
                        await stopped.wait()
                        return
                    tracker.begin_retry(token, step)
                tracker.set_degraded(None)
                workflows.writer.changed()
                busy[0] = 0.0
                run = asyncio.ensure_future(
                    runner.run(uid, spec, emit=emit, control=control, name=obj.ref.name)
                )
            except Exception as exc:  # Redis down (queue, checkpoints) or any fault: report it, retry later
                tracker.set_degraded(str(exc))
                workflows.writer.changed()
                log.warning("Workflow %s waits for the queue: %s", obj.ref.key, exc)
                await _first(stopped.wait(), asyncio.sleep(RETRY_SECONDS))
                continue
            await _first(run, stopped.wait())
            if not run.done():
                await _stop_run(run, control, deleted(), log)
                if run.done() and not run.cancelled() and run.exception() is None:
                    # Deleted: "Cancelled" is written (and its status event wakes Kopf's finalizer wait).
                    _end(tracker, run.result(), None, None, busy[0])
                return
            try:
                outcome = run.result()
            except Exception as exc:  # Redis went away mid-run (or any fault): resume from the checkpoint
                workflow_metrics.RUN_ERRORS.inc()
                tracker.set_degraded(f"run interrupted, resuming: {exc}")
                workflows.writer.changed()
                log.warning(
                    "Workflow %s run interrupted, resuming in %ss: %s", obj.ref.key, RETRY_SECONDS, exc
                )
                await _first(stopped.wait(), asyncio.sleep(RETRY_SECONDS))
                continue
            await _finish(workflows, obj, tracker, outcome, busy[0])
            break
        await stopped.wait()  # until the final status lands and the filter stops matching
    finally:
        active.done.set()
        workflows.runs.pop(uid, None)
        if workflows.writer_task is not None and not workflows.writer_task.done():
            await workflows.writer.flush(uid, timeout=5.0)
        workflows.writer.untrack(uid)


async def _stop_run(
    run: asyncio.Future[WorkflowOutcome], control: RunControl, deleted: bool, log: Logger
) -> None:
    if deleted:
        control.cancel("the Workflow was deleted")  # the runner cancels its outstanding tasks
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, CANCEL_WAIT_SECONDS)
        return
    # Operator stopping or pausing: leave the tasks to the agents; the next operator re-attaches to them.
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await run
    log.info("run left to resume from its checkpoint")


def _end(
    tracker: WorkflowTracker, outcome: WorkflowOutcome, result: Any, ref: JSON | None, busy: float
) -> None:
    """The run's outcome into the tracker; the first time the Workflow ends, into the metrics too."""
    ended_before = tracker.phase.finished
    tracker.finish(outcome, result, ref)
    if not ended_before and tracker.phase.finished:
        resumed_from = tracker.start_time if outcome.resumed else None
        workflow_metrics.observe_finished(tracker.phase.value, outcome.duration, busy, resumed_from)


async def _finish(
    workflows: WorkflowRuntime,
    obj: WorkflowObject,
    tracker: WorkflowTracker,
    outcome: WorkflowOutcome,
    busy: float,
) -> None:
    result, ref = None, None
    if outcome.status == "succeeded":
        result, ref = await _bounded_result(workflows.results, obj.ref, outcome.results)
    _end(tracker, outcome, result, ref, busy)
    # A retry asked for while the run was going is consumed now: only a new token retries the next failure.
    tracker.retry_token = obj.annotations().get(RETRY_ANNOTATION) or tracker.retry_token
    await workflows.writer.flush(obj.ref.uid)


async def cleanup(
    workflows: WorkflowRuntime, runtime: Runtime, ref: WorkflowRef, status: Mapping[str, Any], log: Logger
) -> str | None:
    """The Workflow is being deleted: cancel what still runs, then remove its step refs (through an agent,
    bounded in time), its checkpoints and its result copy. Returns why step refs were kept, if they were."""
    active = workflows.runs.get(ref.uid)
    if active is not None:
        active.control.cancel("the Workflow was deleted")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.done.wait(), CANCEL_WAIT_SECONDS)
    runner = await workflows.connect(runtime, log)  # Unavailable: the finalizer waits for the store
    if active is None:
        await _cancel_from_status(runner.queue, ref, status)
    refs = await runner.forget(ref.uid, ref_cleanup_timeout=workflows.settings.ref_cleanup_timeout)
    if refs.status == "deleted":
        log.info("deleted %d step ref(s) under %s", refs.deleted, refs.prefix)
    kept = None
    if refs.status not in ("none", "deleted"):
        kept = f"step refs under {refs.prefix} not deleted: {refs.message}"
        log.warning("%s", kept)
    await workflows.results.delete(ResultStore.key(ref))
    workflow_metrics.forget(ref.uid)
    return kept


async def _cancel_from_status(queue: TaskQueue, ref: WorkflowRef, status: Mapping[str, Any]) -> None:
    """No run here (deleted while no operator ran it): cancel the tasks the status says are in flight."""
    for step in status.get("steps") or []:
        pool = str(step.get("pool") or "")
        if step.get("phase") not in (StepPhase.RUNNING, StepPhase.RETRYING) or not pool:
            continue
        pool = pool if "/" in pool else f"{ref.namespace}/{pool}"
        attempt = max(int(step.get("attempts") or 1) - 1, 0)
        for index in range(int(step.get("parts") or 1)):
            tid = task_id(ref.uid, step["name"], int(step.get("visits") or 1), index, attempt)
            with contextlib.suppress(Exception):  # best effort: it may have finished meanwhile
                await queue.cancel(pool, tid, "the Workflow was deleted")
