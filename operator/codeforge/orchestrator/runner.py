"""Run a Workflow: compile its graph, start or resume it from its checkpoint (thread id = workflow id)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph

from codeforge.api.outcome import Outcome
from codeforge.api.task import Task, TaskOutcome, TaskState
from codeforge.api.usage import Budget, BudgetAction
from codeforge.api.workflow import Shutdown, WorkflowSpec
from codeforge.orchestrator import workspace as ws
from codeforge.orchestrator.admission import Admission
from codeforge.orchestrator.approvals import ApprovalBox
from codeforge.orchestrator.budget import BUDGET_EXCEEDED, Crossing, Ledger
from codeforge.orchestrator.compiler import GraphCompiler, graph_key, graph_spec
from codeforge.orchestrator.dispatch import DispatchContext, StepDispatcher, Waiting
from codeforge.orchestrator.events import EventKind, EventSink, ProgressEvent, ignore_events
from codeforge.orchestrator.fairness import fair_share_of
from codeforge.orchestrator.flag import Flag
from codeforge.orchestrator.rewind import rewind
from codeforge.orchestrator.shutdown import (
    STOP_MESSAGE,
    STOPPED,
    TERMINATE_MESSAGE,
    TERMINATED,
    StopGate,
)
from codeforge.orchestrator.state import RunState
from codeforge.queue import TaskNotFoundError, TaskQueue

GRAPH_CACHE_SIZE = 256
#: How long every running node of a run waits on a task before the run is parked: its graph is dropped
#: and the runner waits for a task in its place (a few KiB instead of LangGraph's loop, ~60 KiB). Resuming
#: costs a checkpoint read and the superstep's nodes run again, so a step that ends sooner never parks.
#: `codeforge run`'s; the operator parks sooner (CODEFORGE_WORKFLOW_PARK_SECONDS, 0.1 s).
PARK_AFTER_SECONDS = 1.0
#: How long forget() waits for an agent to delete a run's step refs before it lets the run go anyway.
REF_CLEANUP_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class RefCleanup:
    """What forget() did about the run's step refs (refs/codeforge/<run>/...) in its repository."""

    #: "none": the run has no workspace (or never resolved it); "deleted"; "pending": no agent answered in
    #: time, the cleanup task stays queued for a later agent; "failed": the agent reported `message`.
    status: str
    prefix: str = ""
    deleted: int = 0
    message: str = ""


@dataclass(frozen=True)
class WorkflowOutcome:
    workflow: str
    status: str  # succeeded | failed | cancelled
    results: dict[str, Any]
    error: str | None
    history: list[dict[str, Any]]
    duration: float
    resumed: bool = False
    #: spec.workspace runs: {url, ref, base, commit (the final one), and once published: branch, diffstat,
    #: files}; None without a workspace
    workspace: dict[str, Any] | None = None
    #: Why it failed, when a reason applies (BudgetExceeded)
    reason: str | None = None
    #: {"total": {tokensIn, tokensOut, cost}, "steps": {step: ...}} when tasks reported usage
    usage: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "workflow": self.workflow,
            "status": self.status,
            "error": self.error,
            "results": self.results,
            "history": self.history,
            "duration": round(self.duration, 6),
            "resumed": self.resumed,
        }
        if self.workspace is not None:
            data["workspace"] = self.workspace
        if self.reason is not None:
            data["reason"] = self.reason
        if self.usage is not None:
            data["usage"] = self.usage
        return data


@dataclass
class WorkflowHandle:
    """Handles to a running workflow from outside: suspend/resume dispatching (spec.suspend), cancel, stop or
    terminate (spec.shutdown, `orchestrator.shutdown`), and the decisions of its approval steps."""

    running: Flag = field(default_factory=Flag)
    cancelled: Flag = field(default_factory=Flag)
    reason: str = ""
    approvals: ApprovalBox = field(default_factory=ApprovalBox)
    #: spec.suspend; a reached spec.budget holds the run suspended on its own (the run's ledger)
    suspended: bool = False
    ledger: Ledger | None = None
    #: spec.shutdown once requested (it is one way: Stop may become Terminate, nothing goes back)
    shutdown: Shutdown | None = None
    gate: StopGate = field(default_factory=StopGate)

    def __post_init__(self) -> None:
        self.running.set()

    def suspend(self) -> None:
        self.suspended = True
        self.running.clear()

    def resume(self) -> None:
        self.suspended = False
        if (self.ledger is None or self.ledger.crossed is None) and not self.gate.requested:
            self.running.set()

    def stop(self) -> None:
        """spec.shutdown Stop: dispatch nothing new and withdraw the queued tasks no agent took; the run ends
        once its running tasks have ended."""
        if self.shutdown is None:
            self.shutdown = Shutdown.STOP
        self.running.clear()
        self.gate.request()

    def terminate(self) -> None:
        """spec.shutdown Terminate: cancel the run and its outstanding tasks now."""
        self.shutdown = Shutdown.TERMINATE
        self.running.clear()
        self.cancel(TERMINATE_MESSAGE)

    def request_shutdown(self, mode: Shutdown | None) -> None:
        if mode is Shutdown.TERMINATE and self.shutdown is not Shutdown.TERMINATE:
            self.terminate()
        elif mode is Shutdown.STOP and self.shutdown is None:
            self.stop()

    def set_budget(self, budget: Budget | None) -> None:
        """spec.budget changed on a running Workflow: raising it above the usage lets a run it suspended
        go on; lowering it below stops dispatching."""
        if self.ledger is None:
            return
        self.ledger.rebudget(budget)
        if self.ledger.crossed is not None:
            self.running.clear()
        elif not self.suspended and not self.gate.requested:
            self.running.set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the run and cancel its outstanding tasks; `run()` returns status "cancelled"."""
        self.reason = reason
        self.cancelled.set()


class WorkflowRunner:
    """Runs workflows on a task queue, durable through a LangGraph checkpointer.

    `run()` is idempotent on the workflow id: it starts a new run, resumes an interrupted one from its last
    checkpoint (completed steps are not run again; in-flight tasks are re-attached by their ids), or returns
    the outcome of a finished one.
    """

    def __init__(
        self,
        queue: TaskQueue,
        checkpointer: BaseCheckpointSaver[Any] | None = None,
        *,
        park_after: float | None = PARK_AFTER_SECONDS,
        admission: Admission | None = None,
    ) -> None:
        self.queue = queue
        #: turns for runs to start or resume (orchestrator.admission); none: no limit, as `codeforge run` runs
        #: (the operator sets CODEFORGE_WORKFLOW_BUSY_RUNS)
        self.admission = admission if admission is not None else Admission(None)
        #: see PARK_AFTER_SECONDS; None: never park
        self.park_after = park_after
        self.checkpointer = checkpointer if checkpointer is not None else InMemorySaver()
        #: workflow id -> task id -> first outcome received, kept while a run may still be resumed here
        self._first: dict[str, dict[str, TaskOutcome]] = {}
        #: compiled graphs by the spec's graph (`compiler.graph_key`): compiling costs more than running a
        #: step, and runs of one template share one
        self._graphs: OrderedDict[str, tuple[GraphCompiler, CompiledStateGraph[RunState, StepDispatcher]]] = (
            OrderedDict()
        )

    def graph(self, spec: WorkflowSpec) -> CompiledStateGraph[RunState, StepDispatcher]:
        return self._compiled(spec)[1]

    def _compiled(
        self, spec: WorkflowSpec
    ) -> tuple[GraphCompiler, CompiledStateGraph[RunState, StepDispatcher]]:
        key = graph_key(spec)
        compiled = self._graphs.get(key)
        if compiled is None:
            compiler = GraphCompiler(graph_spec(spec))
            compiled = compiler, compiler.build().compile(checkpointer=self.checkpointer)
            self._graphs[key] = compiled
            if len(self._graphs) > GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return compiled

    async def run(
        self,
        workflow_id: str,
        spec: WorkflowSpec,
        *,
        emit: EventSink = ignore_events,
        control: WorkflowHandle | None = None,
        name: str | None = None,
        namespace: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> WorkflowOutcome:
        """Run (start, resume or report) the workflow; `name` fills {{workflow}} in the workspace's
        pushBranch (default: the run id); name, namespace and labels are `workflow` in the
        spec.fairShare.concurrencyKey expression."""
        control = control or WorkflowHandle()
        if spec.suspend:
            control.suspend()
        control.request_shutdown(spec.shutdown)  # a resumed run reads spec.shutdown again
        config: RunnableConfig = {
            "configurable": {"thread_id": workflow_id},
            # a superstep per part batch and per join, plus begin: bounded by maxStepRuns
            "recursion_limit": 2 * spec.max_step_runs + 10,
        }
        ctx = DispatchContext(
            workflow=workflow_id,
            priority=spec.priority,
            emit=emit,
            max_in_flight=spec.max_tasks_in_flight,
            deadline=None,
            running=control.running,
            first=self._first.setdefault(workflow_id, {}),
            name=name or workflow_id,
            approvals=control.approvals,
            fair=await fair_share_of(spec, workflow_id, name=name or "", namespace=namespace, labels=labels),
            stop=control.gate,
        )
        dispatcher = StepDispatcher(self.queue, ctx)
        compiler, graph = self._compiled(spec)
        leave = await self.admission.enter()
        try:
            snapshot = await graph.aget_state(config)
        except BaseException:  # the checkpoint store is down (the run is retried): not the turn's hold
            leave()
            raise
        values: dict[str, Any] = dict(snapshot.values or {})
        started_at = float(values.get("started_at") or time.time())
        # A run that started has `started_at` in its state. A checkpoint without it is a shell (a process
        # killed between writing the input checkpoint and its writes): start afresh rather than take it for
        # a finished run with no results.
        begun = bool(values.get("started_at"))
        if begun and not snapshot.next:
            leave()
            return self._outcome(workflow_id, values, started_at, resumed=True)  # finished before
        ctx.ledger = control.ledger = Ledger.restore(spec.budget, values.get("usage"))
        if ctx.ledger.crossed is not None or control.gate.requested:
            control.running.clear()
        resumed = begun
        if spec.timeout_seconds is not None:
            ctx.deadline = started_at + spec.timeout_seconds
        emit(
            ProgressEvent(
                EventKind.WORKFLOW_RESUMED if resumed else EventKind.WORKFLOW_STARTED,
                workflow_id,
                detail={"usage": ctx.ledger.to_status()} if ctx.ledger.steps else None,
            )
        )
        graph_input: RunState | None = None
        if not resumed:
            graph_input = {"input": spec.input, "started_at": started_at}
            graph_input.update(await compiler.first_route(ctx, graph_input))  # type: ignore[typeddict-item]
            compiler.dispatch_early(dispatcher, dict(graph_input))
        stop = asyncio.ensure_future(control.cancelled.wait())
        over_budget: Crossing | None = None
        settled = False
        job: asyncio.Future[Any] | None = None
        try:
            while True:
                ctx.turn_back = leave  # the turn goes back once the run waits (or below, once it ends)
                job = asyncio.ensure_future(graph.ainvoke(graph_input, config, context=dispatcher))
                graph_input = None  # from the second graph on, the run goes on from its checkpoint
                over_budget, park = await self._supervise(job, stop, dispatcher)
                if not park:
                    break
                # Every running node waits on a task: drop the graph (its LangGraph loop is most of what a
                # run holds) and wait for a task here; the run goes on from its checkpoint, and the nodes
                # run again find the ended task in `first` and re-attach to the others.
                parked = dict(ctx.waiting)  # the cancelled nodes take theirs out
                job.cancel()
                # asyncio.wait, not `await job` under suppress(CancelledError): this coroutine may be
                # cancelled meanwhile (shutdown, a test's cancel), and that must not be swallowed.
                await asyncio.wait({job})
                if not job.cancelled():
                    break  # it ended on its own meanwhile
                # Not the cancelled task itself: its CancelledError's traceback holds the loop's frames.
                job = _cancelled_future()
                if not await self._parked(dispatcher, parked, stop):
                    break  # cancelled or timed out while parked: as if the graph were cancelled
                leave = await self.admission.enter()
            # Read before the graph is cancelled: cancelling releases what waits at the gate.
            settled = not job.done() and over_budget is None and ctx.stop.settled(ctx.outstanding)
        finally:
            leave()
            stop.cancel()
            if job is not None and not job.done():
                # Timeout, cancel(), or this coroutine cancelled (shutdown): stop the graph. Its queued tasks
                # are cancelled only on timeout and cancel(); after a shutdown a restart re-attaches them.
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        assert job is not None
        cancelled = job.cancelled() and control.cancelled.is_set()
        stopped = settled and job.cancelled() and not cancelled
        if job.cancelled():
            await self._cancel_outstanding(ctx)
            values = dict((await graph.aget_state(config)).values or {})
            if cancelled:
                values["error"] = f"cancelled: {control.reason}"
            elif over_budget is not None:
                values["error"] = over_budget.message
            elif stopped:
                values["error"] = STOP_MESSAGE
            else:
                values["error"] = _timed_out(spec)
        else:
            values = job.result()  # a queue or checkpoint error propagates; the run can resume later
            if values.get("error") and ctx.deadline is not None and time.time() >= ctx.deadline:
                # Its tasks carry the workflow's deadline, so an agent may fail one at the same instant the
                # runner's own timer fires: the cause is the workflow's timeout either way, so say that.
                values["error"] = _timed_out(spec)
        self._first.pop(workflow_id, None)  # the run ended: nothing resumes it in this process
        outcome = self._outcome(
            workflow_id, values, started_at, resumed=resumed, cancelled=cancelled or stopped
        )
        reason = None
        if cancelled and control.shutdown is Shutdown.TERMINATE:
            reason = TERMINATED
        elif stopped:
            reason = STOPPED
        elif over_budget is not None and not cancelled:
            reason = BUDGET_EXCEEDED
        outcome = dataclasses.replace(
            outcome,
            reason=reason,
            usage=ctx.ledger.to_status() if ctx.ledger.steps else None,
        )
        emit(
            ProgressEvent(
                EventKind.WORKFLOW_FINISHED,
                workflow_id,
                status=outcome.status,
                message=outcome.error or "",
                duration=outcome.duration,
            )
        )
        return outcome

    async def _supervise(
        self, job: asyncio.Future[Any], stop: asyncio.Future[Any], dispatcher: StepDispatcher
    ) -> tuple[Crossing | None, bool]:
        """Wait for the graph, a cancel, a settled Stop, the deadline or the run to be parkable; meanwhile
        act on spec.budget and withdraw what Stop keeps from starting. Returns the crossing when the budget
        ends the run (onExceed Fail, once the run wants to dispatch more), else None; and whether to park
        the run."""
        ctx = dispatcher.ctx
        ledger, gate = ctx.ledger, ctx.stop
        while True:
            if gate.requested:
                await self._withdraw_waiting(dispatcher)
            if gate.settled(ctx.outstanding):
                return None, False  # Stop: nothing runs any more and the run waits for something new
            gate.changed.clear()
            changed = asyncio.ensure_future(ledger.changed.wait())
            blocked = asyncio.ensure_future(ledger.blocked.wait())
            poked = asyncio.ensure_future(gate.changed.wait())
            idle = asyncio.ensure_future(self._idle_for(ctx, self.park_after))
            waiting: set[asyncio.Future[Any]] = {job, stop, changed, poked, idle}
            crossing = ledger.crossed
            if crossing is not None and crossing.action is BudgetAction.FAIL:
                waiting.add(blocked)
            try:
                done, _ = await asyncio.wait(
                    waiting, timeout=self._seconds_left(ctx.deadline), return_when=FIRST_COMPLETED
                )
            finally:
                changed.cancel()
                blocked.cancel()
                poked.cancel()
                idle.cancel()
            if not done or job in done or stop in done:
                return None, False
            if ledger.changed.is_set():
                ledger.changed.clear()
                crossing = ledger.crossed
                ctx.emit(
                    ProgressEvent(EventKind.BUDGET_RAISED, ctx.workflow)
                    if crossing is None
                    else ProgressEvent(
                        EventKind.BUDGET_EXCEEDED,
                        ctx.workflow,
                        crossing.step,
                        status=crossing.action.value,
                        message=crossing.message,
                        detail={"usage": ledger.to_status()},
                    )
                )
            if crossing is not None and crossing.action is BudgetAction.FAIL and ledger.blocked.is_set():
                return crossing, False  # the run wants more than its budget allows: it fails now
            if idle in done and not idle.cancelled() and ctx.parkable() and not gate.requested:
                return None, True

    @staticmethod
    async def _withdraw_waiting(dispatcher: StepDispatcher) -> None:
        """Stop: withdraw the tasks the run's parts wait on that no agent has claimed; their parts then wait
        at the gate (`StepDispatcher._ended_part`). Parts that wait on a task later withdraw it themselves
        (a parked run's nodes, run again, too), so each task is tried here once."""
        gate = dispatcher.ctx.stop
        for tid, waiting in list(dispatcher.ctx.waiting.items()):
            if tid not in gate.tried:
                gate.tried.add(tid)
                await dispatcher.withdraw(waiting.pool, tid)

    @staticmethod
    async def _idle_for(ctx: DispatchContext, seconds: float | None) -> None:
        """Return once every running node of the run has waited on a task for `seconds` (never when
        None)."""
        if seconds is None:
            await asyncio.Future()  # parking is off: wait for ever (cancelled by the caller)
            return
        while True:
            await ctx.idle.wait()
            await asyncio.sleep(seconds)
            if ctx.parkable():
                return

    async def _parked(
        self, dispatcher: StepDispatcher, parked: dict[str, Waiting], stop: asyncio.Future[Any]
    ) -> bool:
        """The run is parked: wait, in its nodes' place, for one of the tasks they waited on, or for anything
        the graph must see (a budget change, Stop). True to run the graph again; False when the run was
        cancelled or its deadline passed meanwhile."""
        ctx = dispatcher.ctx
        waits = {
            asyncio.ensure_future(self.queue.wait_result(w.pool, tid, w.seconds_left())): (tid, w)
            for tid, w in parked.items()
        }
        changed = asyncio.ensure_future(ctx.ledger.changed.wait())
        poked = asyncio.ensure_future(ctx.stop.changed.wait())
        try:
            done, _ = await asyncio.wait(
                {*waits, stop, changed, poked},
                timeout=self._seconds_left(ctx.deadline),
                return_when=FIRST_COMPLETED,
            )
        finally:
            for future in (*waits, changed, poked):
                future.cancel()
        for wait, (tid, waited) in waits.items():
            # An error (the step's timeout, the task gone, Redis down) is the node's to meet: it runs again.
            if wait in done and wait.exception() is None:
                dispatcher.settle(tid, waited, wait.result())
        return bool(done) and stop not in done

    async def rewind(self, workflow_id: str, spec: WorkflowSpec) -> str | None:
        """Retry a failed run: rewind its thread to just before the step that failed (or was cut off by
        spec.timeoutSeconds, whose deadline restarts), so the next `run()` runs that step again with new task
        ids and continues. Returns the step's name; None when the run never started. Raises `RewindError`
        when there is no step to retry from (see `orchestrator.rewind`)."""
        compiler, graph = self._compiled(spec)
        return await rewind(graph, compiler, workflow_id)

    async def forget(
        self, workflow_id: str, *, ref_cleanup_timeout: float = REF_CLEANUP_WAIT_SECONDS
    ) -> RefCleanup:
        """Delete a run's checkpoints (the Workflow was deleted), and first its step refs in the repository:
        an agent of the run's workspace pool deletes them (a `cleanup` system task). That waits at most
        `ref_cleanup_timeout` seconds: deletion must not hang on a pool without agents; the task stays queued
        (deterministic id) so the next agent still deletes them. The pushed pushBranch is never touched."""
        self._first.pop(workflow_id, None)
        cleanup = await self._delete_step_refs(workflow_id, ref_cleanup_timeout)
        await self.checkpointer.adelete_thread(workflow_id)
        return cleanup

    async def _delete_step_refs(self, workflow_id: str, timeout: float) -> RefCleanup:
        latest = await self.checkpointer.aget_tuple({"configurable": {"thread_id": workflow_id}})
        values = (latest.checkpoint.get("channel_values") or {}) if latest is not None else {}
        current = values.get("workspace")
        if not isinstance(current, dict) or not all(current.get(k) for k in ("url", "pool", "base")):
            return RefCleanup("none")  # no workspace, or its ref never resolved: no step ref was pushed
        pool, request = str(current["pool"]), ws.cleanup_request(str(current["url"]), workflow_id)
        prefix, tid = request.push_ref or "", ws.cleanup_task_id(workflow_id)
        await self.queue.enqueue(
            Task(
                id=tid,
                pool=pool,
                workflow=workflow_id,
                step="_cleanup",
                payload={"workflow": workflow_id, "step": "_cleanup", "action": request.action.value},
                max_attempts=ws.SYSTEM_TASK_ATTEMPTS,
                workspace=request,
            )
        )  # False (already queued: the deletion is retried) is fine: wait for that one
        try:
            outcome = await self.queue.wait_result(pool, tid, timeout)
        except TimeoutError:
            return RefCleanup(
                "pending",
                prefix,
                message=f"no agent of pool {pool!r} deleted the step refs {prefix}* within {timeout:g}s; "
                f"the cleanup task {tid} stays queued for the pool's next agent",
            )
        except TaskNotFoundError:
            return RefCleanup("failed", prefix, message=f"the cleanup task {tid} vanished from pool {pool!r}")
        info = outcome.result.get("workspace") if isinstance(outcome.result, dict) else None
        if outcome.state is TaskState.SUCCEEDED and isinstance(info, dict):
            return RefCleanup("deleted", prefix, deleted=int(info.get("deleted") or 0))
        return RefCleanup("failed", prefix, message=outcome.error or outcome.state.value)

    async def _cancel_outstanding(self, ctx: DispatchContext) -> None:
        await ctx.settle_early()
        for tid, pool in list(ctx.outstanding.items()):
            with contextlib.suppress(Exception):  # best effort: the task may have just finished
                await self.queue.cancel(pool, tid, "workflow ended")
        ctx.outstanding.clear()

    @staticmethod
    def _seconds_left(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.time(), 0.0)

    @staticmethod
    def _outcome(
        workflow_id: str, values: dict[str, Any], started_at: float, *, resumed: bool, cancelled: bool = False
    ) -> WorkflowOutcome:
        error = values.get("error")
        workspace = None
        if values.get("workspace"):
            current = values["workspace"]
            workspace = {k: v for k, v in current.items() if k not in ("head", "pool", "published")}
            workspace["commit"] = current.get("head")
        return WorkflowOutcome(
            workflow=workflow_id,
            status=(Outcome.CANCELLED if cancelled else Outcome.FAILED if error else Outcome.SUCCEEDED).value,
            results=dict(values.get("results") or {}),
            error=error,
            history=list(values.get("history") or []),
            duration=time.time() - started_at,
            resumed=resumed,
            workspace=workspace,
        )


def _cancelled_future() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.cancel()
    return future


def _timed_out(spec: WorkflowSpec) -> str:
    return f"workflow timed out after {spec.timeout_seconds:g}s (spec.timeoutSeconds)"
