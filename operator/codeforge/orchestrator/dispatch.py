"""Run one part of a step: a task in the pool's queue, awaited without polling, retried per the step's policy.

Task ids are deterministic: `{workflow}/{step}/v{visit}/p{index}/a{attempt}`. Enqueue is idempotent on the id,
so a node that LangGraph re-executes after a crash finds the task it dispatched before (queued, running or
finished) and waits for that one instead of creating a twin: the in-flight step is re-attached, not re-run.

The first outcome received for a task id is kept (`DispatchContext.first`, owned by the runner across resumes
of a run in this process) and any later one ignored: when Redis loses a completion (a crash in
durability=fast) the task runs again and may publish a second, different result, but the step keeps the one it
saw first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from codeforge.api.approval import now_rfc3339
from codeforge.api.outcome import Outcome
from codeforge.api.task import Priority, Task, TaskOutcome, TaskState, TaskWorkspace
from codeforge.api.usage import Usage, usage_of_result
from codeforge.api.workflow import Step
from codeforge.orchestrator.approvals import ApprovalBox
from codeforge.orchestrator.budget import Ledger
from codeforge.orchestrator.events import EventKind, EventSink, ProgressEvent
from codeforge.orchestrator.fairness import FairShare
from codeforge.orchestrator.flag import Flag
from codeforge.orchestrator.shutdown import WITHDRAWN_MESSAGE, StopGate, withdrawn
from codeforge.queue import HANDLER_BUDGET_SPENT, LOST_LEASE_BUDGET_SPENT, TaskNotFoundError, TaskQueue

#: Handler runs per attempt's task: one. A handler failure ends the attempt and the step's `retries` policy
#: decides on a fresh attempt (new task id) after its backoff, so `retries.max: N` means at most N+1 handler
#: runs for handler failures. Agent deaths spend the task's own lost-lease budget (redelivered in the queue,
#: same attempt) and a drain spends nothing: neither says anything about the step, so neither spends a retry.
HANDLER_RUNS_PER_ATTEMPT: Final = 1
#: How long a run that ends waits for its early enqueues to return before it cancels their tasks
EARLY_SETTLE_SECONDS: Final = 10.0

log = logging.getLogger(__name__)


def task_id(workflow: str, step: str, visit: int, index: int, attempt: int) -> str:
    return f"{workflow}/{step}/v{visit}/p{index}/a{attempt}"


@dataclass(frozen=True, slots=True)
class Waiting:
    """A part's task that a node waits on: what the runner needs to wait for it instead, while the run is
    parked (no graph running; see `WorkflowRunner`)."""

    pool: str
    step: str
    index: int
    attempt: int
    #: monotonic time the task's step timeout ends; None without one
    deadline: float | None

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)


#: The record of a part another part of its firstSuccess step beat.
_LOST_RACE: Final = {"status": Outcome.CANCELLED.value, "error": "another part succeeded first"}


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # read, so asyncio does not log it: the node that takes it over raises it


def _set(event: Flag) -> Flag:
    event.set()
    return event


@dataclass
class DispatchContext:
    """Per-run, in-process coordination that is not part of the checkpointed state."""

    workflow: str
    priority: Priority
    emit: EventSink
    max_in_flight: int  # spec.maxTasksInFlight: `in_flight`'s slots
    deadline: float | None  # Unix time the whole workflow must end by
    running: Flag = field(default_factory=lambda: _set(Flag()))  # cleared while suspended
    #: "step#visit" -> set once a part succeeded, so firstSuccess can cancel the other parts
    winners: dict[str, Flag] = field(default_factory=dict)
    #: task id -> pool of every task dispatched and not yet finished, to cancel them on timeout or cancel
    outstanding: dict[str, str] = field(default_factory=dict)
    #: task id -> the first terminal outcome received for it; later ones are ignored (see the module doc)
    first: dict[str, TaskOutcome] = field(default_factory=dict)
    #: The Workflow's name ({{workflow}} in spec.workspace.git.pushBranch); default: the run id
    name: str = ""
    #: Decisions for the run's approval steps (fed by the operator or `codeforge run`)
    approvals: ApprovalBox = field(default_factory=ApprovalBox)
    #: Tokens and cost per step and in total, against spec.budget (orchestrator.budget)
    ledger: Ledger = field(default_factory=Ledger)
    #: The key, weight and cap every task of the run carries (spec.fairShare)
    fair: FairShare = field(default_factory=FairShare)
    #: "step#visit/part" -> monotonic time the step was routed to (became ready), for the dispatch latency;
    #: in-process only (a step resumed from a checkpoint has none and reports no latency)
    ready: dict[str, float] = field(default_factory=dict)
    #: spec.shutdown Stop: where waits that dispatch nothing are counted (orchestrator.shutdown)
    stop: StopGate = field(default_factory=StopGate)
    #: graph nodes running now, and the task each part that waits on one waits on: when every running node
    #: waits on a task the run may be parked (the runner drops its graph until a task ends)
    nodes: int = 0
    waiting: dict[str, Waiting] = field(default_factory=dict)
    #: set while every running node waits on a task (`parkable`)
    idle: Flag = field(default_factory=Flag)
    #: gives the run's admission turn back, once: when it enqueued a task, every running node waits on a
    #: task, or a node waits on what no task ends (`give_back_turn`)
    turn_back: Callable[[], None] | None = None
    #: task ids whose failed attempt was reported (ATTEMPT_FAILED), so a node run again does not repeat it
    reported: set[str] = field(default_factory=set)
    #: "step#visit/part" -> Unix time the part began, kept while its node may run again
    part_started: dict[str, float] = field(default_factory=dict)
    #: task id -> monotonic time its step's timeoutSeconds ends (dispatched tasks of steps with one)
    timeouts: dict[str, float] = field(default_factory=dict)
    #: task id -> its enqueue, started as its step was routed to, before the step's node runs
    #: (`StepDispatcher.dispatch_early`); the node takes it over
    early: dict[str, asyncio.Future[dict[str, Any] | None]] = field(default_factory=dict)
    #: a slot per dispatched task until its part ends (`max_in_flight` of them)
    in_flight: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.workflow
        self.in_flight = asyncio.Semaphore(self.max_in_flight)

    def parkable(self) -> bool:
        """Every node of the running superstep waits on a task: nothing else would happen before one ends."""
        return self.nodes > 0 and len(self.waiting) == self.nodes

    def give_back_turn(self) -> None:
        """The run waits (on its tasks, or on what no task ends: an approval, a suspension, its budget): its
        admission turn goes back now, not when its hold runs out (orchestrator.admission)."""
        turn_back, self.turn_back = self.turn_back, None
        if turn_back is not None:
            turn_back()

    def _idle_changed(self) -> None:
        if self.parkable():
            self.idle.set()
            self.give_back_turn()
        else:
            self.idle.clear()

    @contextlib.contextmanager
    def node(self) -> Iterator[None]:
        """Around a graph node's body: counts the nodes running, for `parkable`."""
        self.nodes += 1
        self._idle_changed()
        try:
            yield
        finally:
            self.nodes -= 1
            self._idle_changed()

    @contextlib.contextmanager
    def waiting_on(self, tid: str, waiting: Waiting) -> Iterator[None]:
        self.waiting[tid] = waiting
        self._idle_changed()
        try:
            yield
        finally:
            self.waiting.pop(tid, None)
            self._idle_changed()

    async def settle_early(self) -> None:
        """Wait for early enqueues no node took over (the run ends): their tasks are then in the queue
        and in `outstanding`, where the runner cancels them."""
        pending, self.early = list(self.early.values()), {}
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=EARLY_SETTLE_SECONDS)
            for early in stuck:  # the queue does not answer: its cancel would not be served either
                early.cancel()

    def winner(self, key: str) -> Flag:
        return self.winners.setdefault(key, Flag())


@dataclass(frozen=True, slots=True)
class PartRequest:
    step: Step
    visit: int
    index: int
    payload: Any
    first_success: bool
    workspace: TaskWorkspace | None = None  # the repository checkout the task works in (spec.workspace)


@dataclass
class StepDispatcher:
    """Runs the parts of one workflow run; LangGraph hands it to the nodes as the runtime context."""

    queue: TaskQueue
    ctx: DispatchContext

    async def run_part(self, req: PartRequest) -> dict[str, Any]:
        """Dispatch and await one part, with retries; returns its outcome record for the join."""
        key = f"{req.step.name}#{req.visit}/{req.index}"
        # kept across the node's runs (a parked run runs it again): the part's duration counts from here
        started = self.ctx.part_started.setdefault(key, time.time())
        record = await self._run_attempts(req, started)
        del self.ctx.part_started[key]
        return record

    async def _run_attempts(self, req: PartRequest, started: float) -> dict[str, Any]:
        step = req.step
        last: dict[str, Any] = {}
        for attempt in range(step.retries.max + 1):
            tid = task_id(self.ctx.workflow, step.name, req.visit, req.index, attempt)
            if attempt and await self.queue.get(step.pool, tid) is None:
                await asyncio.sleep(step.retries.delay(attempt))  # skipped when resuming an existing retry
            outcome = await self._attempt(req, tid, attempt)
            last = {
                "index": req.index,
                "attempts": attempt + 1,
                "task_id": tid,
                "started": started,
                **outcome,
            }
            last["finished"] = time.time()
            if outcome["status"] in (Outcome.SUCCEEDED, Outcome.CANCELLED):
                return last
            if tid not in self.ctx.reported:  # else a node run again (parked or resumed) reported it before
                self.ctx.reported.add(tid)
                self.ctx.emit(
                    ProgressEvent(
                        EventKind.ATTEMPT_FAILED,
                        self.ctx.workflow,
                        step.name,
                        req.index,
                        attempt,
                        tid,
                        Outcome.FAILED.value,
                        outcome.get("error") or "",
                        time.time() - started,
                        agent=outcome.get("agent", ""),
                    )
                )
            if outcome.get("final"):
                break
        last.pop("final", None)
        return last

    async def _attempt(self, req: PartRequest, tid: str, attempt: int) -> dict[str, Any]:
        recorded = self.ctx.first.get(tid)
        if recorded is not None:  # resumed in this process: neither ask the queue again nor re-dispatch
            return await self._ended_part(req, recorded)
        step = req.step
        # Enqueued as the step was routed to (`dispatch_early`): this node takes its enqueue over.
        early = self.ctx.early.pop(tid, None)
        # Dispatched by this run and not ended: the node runs again (the run was parked). It runs already:
        # neither dispatched again nor reported again.
        again = early is None and tid in self.ctx.outstanding
        # Under Stop a task dispatched before (a resumed run) is re-attached: it runs already, it is not new.
        known = (
            again
            or early is not None
            or (self.ctx.stop.requested and await self.queue.get(step.pool, tid) is not None)
        )
        if not known:  # suspended workflows (spec.suspend, spec.budget, Stop) dispatch nothing new
            await self._may_dispatch()
        async with self.ctx.in_flight:
            if not known:  # again: a sibling's result may have reached the budget meanwhile
                await self._may_dispatch()
            if not again:
                failed = await (early if early is not None else self._dispatch(req, tid, attempt))
                if failed is not None:
                    return failed
                self.ctx.give_back_turn()  # dispatched (a fan-out's parts are enqueued in one turn)
            if self.ctx.stop.requested:
                # Stop came during the enqueue, or the node runs again (parked, or resumed after a restart)
                # under Stop: a task no agent took yet does not start. The runner withdraws those that
                # already wait when Stop comes; from here on this part waits on, as those do.
                await self.withdraw(step.pool, tid)
            # The step's timeout counts from the dispatch, however often the node waits (the workflow's own
            # deadline is enforced by the runner).
            waiting = Waiting(step.pool, step.name, req.index, attempt, self.ctx.timeouts.get(tid))
            # Not in a `finally`: when the run is cancelled mid-wait the task stays listed, so the runner
            # can cancel it in the queue (or, parked, wait for it).
            try:
                with self.ctx.waiting_on(tid, waiting):
                    outcome = await self._wait(req, tid, waiting.seconds_left())
            except TimeoutError:
                await self.queue.cancel(step.pool, tid, "timed out")
                self._ended(tid)
                return {
                    "status": Outcome.FAILED.value,
                    "error": f"step {step.name!r} timed out after {step.timeout_seconds or 0:.3g}s",
                }
            except TaskNotFoundError:
                self._ended(tid)
                return {
                    "status": Outcome.FAILED.value,
                    "error": f"task {tid} vanished from pool {step.pool!r}",
                    "final": True,
                }
            self._ended(tid)
        if outcome is None:
            return dict(_LOST_RACE)
        self._task_finished(step.name, req.index, attempt, outcome)
        return await self._ended_part(req, self._first(outcome))

    async def withdraw(self, pool: str, tid: str) -> bool:
        """Stop: cancel the task unless an agent has claimed it (atomic with claims in the queue)."""
        return await self.queue.cancel(pool, tid, WITHDRAWN_MESSAGE, only_if_queued=True)

    async def _ended_part(self, req: PartRequest, outcome: TaskOutcome) -> dict[str, Any]:
        """The part's record for its task's outcome. A task Stop withdrew never ran: the part waits at the
        gate as an undispatched one does, so the run ends Stopped with the step unfinished (status.steps:
        Cancelled, as Terminate's), not failed by a cancellation; a firstSuccess sibling's win still ends
        it, as for any part that lost that race."""
        if not withdrawn(outcome):
            return self._record(req, outcome)
        with self.ctx.stop.holding():
            if req.first_success:
                await self.ctx.winner(f"{req.step.name}#{req.visit}").wait()
            else:
                await asyncio.Future()  # until the runner ends the run (it is settled now or soon)
        return dict(_LOST_RACE)

    def dispatch_early(self, reqs: list[PartRequest]) -> None:
        """Start enqueueing the first attempts of a visit's parts as the visit is routed to, so the tasks
        reach the agents while LangGraph ends the routing superstep and starts the step's nodes (a few
        loop turns, each as long as everything else ready in it); each part's node then takes its
        enqueue over (`_attempt`). Only what the node would dispatch at once: not while the run is
        suspended or stopping, and only when every part has an in-flight slot free (the slots are taken
        by the nodes, so more parts than free slots would run more tasks than maxTasksInFlight).

        A crash before the route is checkpointed loses nothing and adds nothing: the routing node runs
        again, routes the same way (its inputs are the checkpointed state and the queue's first outcome)
        and enqueues the same ids, which the queue finds existing. Checkpoints already trail their
        supersteps (LangGraph's async durability), so a node's own enqueue could precede them too."""
        ctx = self.ctx
        if not reqs or not ctx.running.is_set() or ctx.stop.requested:
            return
        if len(ctx.outstanding) + len(reqs) > ctx.max_in_flight:  # an early task is outstanding once sent
            return
        for req in reqs:
            tid = task_id(ctx.workflow, req.step.name, req.visit, req.index, 0)
            if tid in ctx.first or tid in ctx.outstanding or tid in ctx.early:
                continue  # ended or dispatched before (a run resumed in this process)
            sent = self._send(req, tid)  # handed to the queue in this turn (Redis: this turn's batch)
            early: asyncio.Future[dict[str, Any] | None]
            if isinstance(sent, dict):  # the task cannot be built: its node returns the failed record
                early = asyncio.get_running_loop().create_future()
                early.set_result(sent)
            else:
                early = asyncio.ensure_future(self._sent(req, tid, 0, sent))
                early.add_done_callback(_retrieved)  # a node that never runs (the run ended) never reads it
            ctx.early[tid] = early

    async def _dispatch(self, req: PartRequest, tid: str, attempt: int) -> dict[str, Any] | None:
        """Enqueue the attempt's task (idempotent on its id); a failed part's record when it cannot be
        built."""
        sent = self._send(req, tid)
        return sent if isinstance(sent, dict) else await self._sent(req, tid, attempt, sent)

    def _send(self, req: PartRequest, tid: str) -> Awaitable[bool] | dict[str, Any]:
        """Build the task and hand it to the queue (in this turn: `TaskQueue.enqueue`); its enqueue to
        await, or the failed part's record when the task cannot be built."""
        step = req.step
        try:
            task = Task(
                id=tid,
                pool=step.pool,
                workflow=self.ctx.workflow,
                step=step.name,
                priority=step.priority or self.ctx.priority,
                payload=req.payload,
                max_attempts=HANDLER_RUNS_PER_ATTEMPT,
                deadline=self._task_deadline(step),
                workspace=req.workspace,
                **self._fair_fields(),
            )
        except ValidationError as exc:  # e.g. a payload over the size limit: the step fails, not the run
            message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            hint = " (narrow what the task receives with the step's `input` expression)"
            return {
                "status": Outcome.FAILED.value,
                "error": f"cannot build the task: {message}{hint}",
                "final": True,
            }
        self.ctx.outstanding[tid] = step.pool
        if step.timeout_seconds is not None:
            self.ctx.timeouts[tid] = time.monotonic() + step.timeout_seconds
        return self.queue.enqueue(task)

    async def _sent(
        self, req: PartRequest, tid: str, attempt: int, enqueue: Awaitable[bool]
    ) -> dict[str, Any] | None:
        """Await the task's enqueue and report it dispatched; None (a dispatched part has no record yet)."""
        step = req.step
        created = await enqueue
        ready = self.ctx.ready.pop(f"{step.name}#{req.visit}/{req.index}", None)
        self.ctx.emit(
            ProgressEvent(
                EventKind.TASK_DISPATCHED,
                self.ctx.workflow,
                step.name,
                req.index,
                attempt,
                tid,
                "queued" if created else "reattached",
                latency=None if ready is None or attempt else time.monotonic() - ready,
            )
        )
        return None

    def _ended(self, tid: str) -> None:
        self.ctx.outstanding.pop(tid, None)
        self.ctx.timeouts.pop(tid, None)

    def settle(self, tid: str, waited: Waiting, outcome: TaskOutcome) -> None:
        """A parked run's task ended (the runner waited for it): record it as the node would have, which
        finds it in `first` when it runs again."""
        if not outcome.state.terminal:
            return
        self._ended(tid)
        self._task_finished(waited.step, waited.index, waited.attempt, outcome)
        self._first(outcome)

    def _task_finished(self, step: str, index: int | None, attempt: int | None, outcome: TaskOutcome) -> None:
        if withdrawn(outcome):
            return  # it never ran (as Terminate's cancelled tasks: no TASK_FINISHED); its part holds the gate
        woken = time.time()
        self.ctx.stop.poke()  # under Stop the run may be over once its last task ended
        latency = None
        if outcome.notified and outcome.finished_at is not None:
            latency = max(woken - outcome.finished_at, 0.0)  # the queue's clock to ours: keep it >= 0
        self.ctx.emit(
            ProgressEvent(
                EventKind.TASK_FINISHED,
                self.ctx.workflow,
                step,
                index,
                attempt,
                outcome.id,
                outcome.state.value,
                duration=outcome.run_seconds,
                latency=latency,
            )
        )

    def _first(self, outcome: TaskOutcome) -> TaskOutcome:
        """Keep the first terminal outcome of a task id; a later, different one is logged and ignored."""
        if not outcome.state.terminal:
            return outcome
        first = self.ctx.first.setdefault(outcome.id, outcome)
        if first is not outcome and (first.state, first.result) != (outcome.state, outcome.result):
            log.warning(
                "task %s reported %s again with a different result (Redis lost the first one?); "
                "keeping the first",
                outcome.id,
                outcome.state.value,
            )
        return first

    def _record(self, req: PartRequest, outcome: TaskOutcome) -> dict[str, Any]:
        step = req.step
        agent = {"agent": outcome.consumer} if outcome.consumer else {}
        if outcome.state is TaskState.SUCCEEDED:
            if req.first_success:
                self.ctx.winner(f"{step.name}#{req.visit}").set()
            record = {"status": Outcome.SUCCEEDED.value, "result": outcome.result, **agent}
            usage = usage_of_result(outcome.result)
            if usage is not None:
                record["usage"] = usage.to_status()
                self._charge(step.name, outcome.id, usage)
            return record
        # One handler run per attempt: the queue's handler-budget note would only repeat that.
        error = (outcome.error or outcome.state.value).split(f"; {HANDLER_BUDGET_SPENT}")[0]
        if outcome.state is TaskState.CANCELLED:
            return {
                "status": Outcome.FAILED.value,
                "error": f"task cancelled: {error}",
                "final": True,
                **agent,
            }
        if outcome.state is TaskState.DEAD and LOST_LEASE_BUDGET_SPENT in error:
            # Its agents kept dying: the lost-lease budget is the whole allowance, not one per step retry.
            return {"status": Outcome.FAILED.value, "error": error, "final": True, **agent}
        return {"status": Outcome.FAILED.value, "error": error, **agent}

    async def run_approval(self, step: Step, visit: int, since: float) -> dict[str, Any]:
        """Wait for the decision on an approval step's visit: no task, no agent, no in-flight slot. `since`
        (checkpointed with the route) is when the wait began, so a resumed run keeps its deadline."""
        deadline = None if step.timeout_seconds is None else since + step.timeout_seconds
        question = step.message or f"approve step {step.name!r}?"
        self.ctx.emit(
            ProgressEvent(
                EventKind.APPROVAL_WAITING,
                self.ctx.workflow,
                step.name,
                message=question,
                detail={"deadline": deadline, "visit": visit},
            )
        )
        self.ctx.give_back_turn()
        with self.ctx.stop.holding():  # Stop ends a run waiting for a decision (no task runs for it)
            decision = await self.ctx.approvals.wait(step.name, visit, question, deadline)
        record: dict[str, Any] = {"index": 0, "attempts": 0, "started": since, "finished": time.time()}
        if decision is None:
            result = {"approved": False, "decision": "timedOut", "by": "", "at": now_rfc3339(), "message": ""}
            error = f"no decision on step {step.name!r} within {step.timeout_seconds:g}s (timeoutSeconds)"
            return record | {"status": Outcome.FAILED.value, "result": result, "error": error}
        result = decision.result(now_rfc3339())
        if decision.approved:
            return record | {"status": Outcome.SUCCEEDED.value, "result": result}
        why = f": {decision.message}" if decision.message else ""
        error = f"step {step.name!r} rejected by {decision.by}{why}"
        return record | {"status": Outcome.FAILED.value, "result": result, "error": error}

    async def _may_dispatch(self) -> None:
        if self.ctx.running.is_set():
            return
        self.ctx.give_back_turn()
        with self.ctx.stop.holding():
            while not self.ctx.running.is_set():
                if self.ctx.ledger.crossed is not None:
                    self.ctx.ledger.blocked.set()  # the run wants more than its budget: the runner decides
                await self.ctx.running.wait()

    def _charge(self, step: str, tid: str, usage: Usage) -> None:
        """Add a task's usage; on reaching spec.budget stop dispatching at once (the runner then fails or
        suspends the Workflow)."""
        ledger = self.ctx.ledger
        was_crossed = ledger.crossed is not None
        ledger.charge(step, usage)
        self.ctx.emit(
            ProgressEvent(
                EventKind.USAGE,
                self.ctx.workflow,
                step,
                task_id=tid,
                detail={"step": ledger.steps[step].to_status(), "total": ledger.total.to_status()},
            )
        )
        if ledger.crossed is not None and not was_crossed:
            self.ctx.running.clear()

    async def run_system(
        self, pool: str, tid: str, step: str, workspace: TaskWorkspace, attempts: int
    ) -> dict[str, Any]:
        """Dispatch and await a workspace system task (resolve, merge, publish: the agent does the Git work
        without running its handler). Idempotent on `tid`, like a step's task, so a re-executed node
        re-attaches to it. Returns {"status", "result"} or {"status", "error"}."""
        await self._may_dispatch()
        async with self.ctx.in_flight:
            task = Task(
                id=tid,
                pool=pool,
                workflow=self.ctx.workflow,
                step=step,
                priority=self.ctx.priority,
                payload={"workflow": self.ctx.workflow, "step": step, "action": workspace.action.value},
                max_attempts=attempts,
                deadline=self.ctx.deadline,
                workspace=workspace,
                **self._fair_fields(),
            )
            self.ctx.outstanding[tid] = pool
            await self.queue.enqueue(task)
            try:  # not in a `finally`: a cancelled run leaves it listed, for the runner to cancel
                outcome = await self.queue.wait_result(pool, tid, None)
            except TaskNotFoundError:
                self.ctx.outstanding.pop(tid, None)
                return {"status": Outcome.FAILED.value, "error": f"task {tid} vanished from pool {pool!r}"}
            self.ctx.outstanding.pop(tid, None)
        self._task_finished(step, None, None, outcome)
        if outcome.state is TaskState.SUCCEEDED:
            return {"status": Outcome.SUCCEEDED.value, "result": outcome.result}
        error = (outcome.error or outcome.state.value).split(f"; {HANDLER_BUDGET_SPENT}")[0]
        return {"status": Outcome.FAILED.value, "error": error}

    def _fair_fields(self) -> dict[str, Any]:
        fair = self.ctx.fair
        return {"fair_key": fair.key, "fair_weight": fair.weight, "max_concurrency": fair.max_concurrency}

    def _task_deadline(self, step: Step) -> float | None:
        """When the task's work is moot (its agent stops there): the attempt's or the workflow's end."""
        ends = [self.ctx.deadline] if self.ctx.deadline is not None else []
        if step.timeout_seconds is not None:
            ends.append(time.time() + step.timeout_seconds)
        return min(ends, default=None)

    async def _wait(self, req: PartRequest, tid: str, timeout: float | None) -> TaskOutcome | None:
        """The task's outcome, or None when a sibling won a firstSuccess race (the task is then cancelled)."""
        if not req.first_success:
            return await self.queue.wait_result(req.step.pool, tid, timeout)
        waiter = asyncio.ensure_future(self.queue.wait_result(req.step.pool, tid, timeout))
        won = asyncio.ensure_future(self.ctx.winner(f"{req.step.name}#{req.visit}").wait())
        try:
            await asyncio.wait({waiter, won}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        finally:
            won.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        await self.queue.cancel(req.step.pool, tid, "another part succeeded first")
        outcome = await self.queue.get(req.step.pool, tid)
        if outcome is not None and outcome.state is TaskState.SUCCEEDED:
            return outcome  # finished in the same instant: keep its result
        return None
