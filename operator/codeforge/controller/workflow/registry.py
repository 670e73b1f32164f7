"""The registry of the Workflows live in this operator (in Kopf's memo as `memo.workflows`): the
orchestrator's runner on the operator's queue with its checkpointer, one `LiveWorkflow` (and its run task,
started by `dispatcher.start`) per running Workflow, the shared status writer, and the queue probe that
reports an outage on every running Workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver

from codeforge.api.approval import decisions_from_annotations
from codeforge.api.usage import Budget
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.controller.services import Logger, OperatorServices
from codeforge.controller.shared_opening import SharedOpening
from codeforge.controller.workflow import metrics as workflow_metrics
from codeforge.controller.workflow.pools import PoolLookup
from codeforge.controller.workflow.results import ResultStore
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.controller.workflow.tracker import WorkflowTracker
from codeforge.orchestrator import WorkflowHandle, WorkflowRunner
from codeforge.orchestrator.admission import Admission
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver, open_checkpointer
from codeforge.orchestrator.flag import Flag
from codeforge.queue import QueueError, TaskQueue

if TYPE_CHECKING:
    from codeforge.controller.workflow.expiry import Expiry

#: How often the queue is probed while Workflows run (the queue itself rides out outages by retrying, so
#: without a probe a run would wait silently), and how long an answer may take.
PROBE_SECONDS: Final = 5.0
PROBE_TIMEOUT: Final = 3.0
#: How long a deletion waits for a cancelled run to cancel its tasks.
CANCEL_WAIT_SECONDS: Final = 20.0
#: How long a shutdown waits for the runs to write their last status.
CLOSE_WAIT_SECONDS: Final = 10.0


#: What tells a run's final status from the ones before it: (phase, retryToken, completionTime).
Landmark = tuple[Any, Any, Any]


def landmark(status: Mapping[str, Any]) -> Landmark:
    return status.get("phase"), status.get("retryToken"), status.get("completionTime")


class Unavailable(Exception):
    """The queue or the checkpoint store cannot be reached (retried with a pause)."""


@dataclass
class LiveWorkflow:
    """One Workflow whose run this operator drives: its controls, its tracker (once the run has read the
    status), the annotations and spec last seen, its task, and when it ended."""

    control: WorkflowHandle
    tracker: WorkflowTracker | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    done: Flag = field(default_factory=Flag)


@dataclass
class WorkflowRegistry:
    """The Workflows live in this operator and what they share (in Kopf's memo as `memo.workflows`)."""

    settings: WorkflowSettings
    writer: StatusWriter
    runs: dict[str, LiveWorkflow] = field(default_factory=dict)
    closed: bool = False
    #: uid -> (the spec, its problems or "", the parsed spec when it has none): a spec is validated once,
    #: not on every watch event, and its run starts from the parsed one (parsing is most of a start's CPU)
    checked: dict[str, tuple[Mapping[str, Any], str, WorkflowSpec | None]] = field(default_factory=dict)
    #: runs that ended here whose final status has not been seen yet (stale events must not restart them):
    #: uid -> the final status's (phase, retryToken, completionTime), None when it wrote none
    ended: dict[str, Landmark | None] = field(default_factory=dict)
    runner: WorkflowRunner | None = None
    results: ResultStore = field(default_factory=ResultStore)
    #: Which AgentPools exist (a pool seen recently is not looked up again for every Workflow start)
    pools: PoolLookup = field(default_factory=PoolLookup)
    #: finished Workflows waiting for their TTL (`expiry.schedule_expiry`), by uid
    expiries: dict[str, Expiry] = field(default_factory=dict)
    writer_task: asyncio.Task[None] | None = None
    probe_task: asyncio.Task[None] | None = None
    #: the runs that start together share one opening of the runner (controller/shared_opening)
    opening: SharedOpening[WorkflowRunner] = field(default_factory=SharedOpening, repr=False)

    async def connect(self, services: OperatorServices, log: Logger) -> WorkflowRunner:
        """The runner on the operator's queue, with its checkpointer (opened once); Unavailable if down."""
        queue: TaskQueue | None = await services.connected_queue(log)
        if queue is None:
            raise Unavailable(services.queue_error)
        runner = self.runner
        while runner is None or runner.queue is not queue:  # an opening for an earlier queue: open again
            runner = await self.opening.join(lambda: self._open_runner(services, queue))
        return runner

    async def _open_runner(self, services: OperatorServices, queue: TaskQueue) -> WorkflowRunner:
        url = services.config.queue_url
        checkpointer: BaseCheckpointSaver[Any]
        if url.startswith("memory://"):
            checkpointer, self.results = InMemorySaver(), ResultStore()
        else:
            try:
                saver = await open_checkpointer(url)
            except QueueError as exc:
                raise Unavailable(f"checkpoint store unreachable: {exc}") from None
            checkpointer, self.results = saver, ResultStore.beside(saver)
        admission = Admission(
            self.settings.busy_runs, observe=workflow_metrics.ADMISSION_WAIT_SECONDS.observe
        )
        self.runner = WorkflowRunner(
            queue, checkpointer, admission=admission, park_after=self.settings.park_after
        )
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
                tracker = run.tracker
                if tracker is not None and (problem is not None or tracker.degraded_by_probe):
                    tracker.set_degraded(problem)
                    tracker.degraded_by_probe = problem is not None

    def parsed(self, uid: str, spec: Mapping[str, Any]) -> WorkflowSpec:
        """The Workflow's spec parsed: the one `dispatcher.observe` validated if it is this spec; else
        parsed now (WorkflowSpecError if invalid)."""
        cached = self.checked.get(uid)
        if cached is not None and cached[2] is not None and cached[0] == spec:
            return cached[2]
        return parse_workflow_spec(dict(spec))

    def forget(self, uid: str) -> None:
        """The Workflow is gone: drop what is kept of it (its run, if one is still live, is cancelled: the
        finalizer's cleanup does that first, unless the finalizer was removed by hand)."""
        self.checked.pop(uid, None)
        self.ended.pop(uid, None)
        run = self.runs.get(uid)
        if run is not None:
            run.control.cancel("the Workflow was deleted")

    async def close(self) -> None:
        """Operator shutdown: stop waiting on the runs (their tasks stay with the agents; the next operator
        re-attaches to them from the checkpoints), let their statuses out, then stop the writer."""
        if self.closed:  # run by the services' shutdown first, then by Kopf's cleanup handler
            return
        self.closed = True
        for expiry in self.expiries.values():  # the next operator waits for them from the statuses
            expiry.stop()
        runs = [run.task for run in self.runs.values() if run.task is not None]
        for run in runs:
            run.cancel()
        if runs:
            await asyncio.wait(runs, timeout=CLOSE_WAIT_SECONDS)
        loops = [task for task in (self.writer_task, self.probe_task) if task is not None]
        for task in loops:
            task.cancel()
        if loops:  # bounded: a loop that swallowed its cancellation must not hold up the operator's exit
            await asyncio.wait(loops, timeout=CLOSE_WAIT_SECONDS)
        await self.writer.drain(CLOSE_WAIT_SECONDS)  # the steps in flight show in the status
        if self.runner is not None and isinstance(self.runner.checkpointer, RedisCheckpointSaver):
            with contextlib.suppress(Exception):
                await self.runner.checkpointer.aclose()

    def set_approvals(self, run: WorkflowHandle | str, annotations: Mapping[str, str], log: Logger) -> None:
        """Hand the Workflow's approval annotations to its run (by control or uid; no run here: nothing)."""
        control = run if isinstance(run, WorkflowHandle) else getattr(self.runs.get(run), "control", None)
        if control is None:
            return
        decisions, problems = decisions_from_annotations(annotations)
        for problem in problems:
            log.warning("ignored: %s", problem)
        control.approvals.replace(decisions)

    def set_budget(self, uid: str, budget: Budget | None) -> bool:
        """spec.budget changed on a running Workflow: raised, a run it suspended goes on; False when no run
        is active here (a run reads spec.budget when it starts)."""
        run = self.runs.get(uid)
        if run is None:
            return False
        run.control.set_budget(budget)
        return True

    def set_suspended(self, uid: str, suspended: bool) -> bool:
        """Pause or resume dispatching of a running Workflow; False when no run is active here."""
        run = self.runs.get(uid)
        if run is None:
            return False
        if suspended:
            run.control.suspend()
        else:
            run.control.resume()
        if run.tracker is not None:
            run.tracker.set_suspended(suspended)
        return True
