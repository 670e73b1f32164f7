"""The claim loop: keep up to `concurrency` tasks running, heartbeat each, report each result once.

Usable in-process (the orchestrator's embedded mode) through `Agent` / `run_agent`, and by the
`codeforge-agent` CLI, which adds signals, the health server and logging around it.

Per task: claim -> handler (cancelled at the task's deadline or --task-timeout) with a heartbeat beside
it -> complete or fail with the lease's fencing token. A lost lease (expired and redelivered, or the task
cancelled) cancels the handler and records nothing: the new owner's result is the one that counts.

Leases are as long as the agent's `lease_seconds` (its pool's spec.queue.leaseSeconds): the claim carries
it, so a task whose agent dies is redelivered after that, whatever the task says.

Stop (SIGTERM): stop claiming, give back any claim that arrives after the stop (nothing spent), let
in-flight tasks run for `grace_seconds`, then cancel the rest and hand them back at once: that spends one of
the task's lost-lease budget, like an agent death, never the handler's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeforge.api.task import Task
from codeforge.api.usage import Usage, parse_usage
from codeforge.queue import Lease, LeaseLostError, QueueError, TaskCancelledError, TaskQueue
from codeforge.queue.ratelimit import MemoryRateLimiter, RateLimiter
from codeforge.workspace import WorkspaceSettings
from codeforge_agent.config import AgentConfig
from codeforge_agent.handlers import Handler, HandlerError, RateLimitedError, TaskContext, build_handler
from codeforge_agent.handlers.workspace import WorkspaceHandler
from codeforge_agent.log_setup import ContextAdapter, get_logger
from codeforge_agent.metrics import AgentMetrics
from codeforge_agent.rate import RateGate
from codeforge_agent.usage_metrics import UsageMetrics

#: Errors of a queue call that the loop logs and retries (with backoff) instead of dying: the queue being
#: unreachable, or any other queue error. LeaseLostError is a QueueError too, so it is caught before these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (QueueError, ConnectionError, OSError, TimeoutError)
REPORT_RETRIES = 5
STATE_SETTLE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class TaskTiming:
    """Where one task's time went inside the agent (perf_counter seconds); for benchmarks and tests."""

    task_id: str
    outcome: str  # succeeded | failed | retry | lease_lost | interrupted | rate_limited
    claimed: float
    started: float
    finished: float
    recorded: float


@dataclass
class _Run:
    """A task this agent is working on."""

    lease: Lease
    handler_task: asyncio.Task[Any] | None = None
    lost: LeaseLostError | None = None
    interrupted: bool = False
    claimed: float = field(default_factory=time.perf_counter)


class Agent:
    def __init__(
        self,
        queue: TaskQueue,
        config: AgentConfig,
        handler: Handler | None = None,
        *,
        metrics: AgentMetrics | None = None,
        on_task_done: Callable[[TaskTiming], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.queue = queue
        self.config = config
        self._owns_handler = handler is None
        inner = handler or build_handler(config.handler, threads=config.concurrency)
        #: Every handler is wrapped: tasks with a Git workspace get their worktree around it (issue #11).
        self.handler: WorkspaceHandler = (
            inner
            if isinstance(inner, WorkspaceHandler)
            else WorkspaceHandler(inner, workspace_settings(config))
        )
        self.metrics = metrics or AgentMetrics()
        self.on_task_done = on_task_done
        #: Consumer name in the queue; unique per process even when embedded mode runs several agents
        #: from one config (they would otherwise overwrite each other's busy/idle record).
        self.agent_id = _reserve_id(config.agent_id)
        self.log: ContextAdapter = get_logger(pool=config.pool, agent=self.agent_id, role=config.role)
        #: True while the last queue operation succeeded; /readyz reports it.
        self.connected = False
        self.draining = False
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._active: dict[str, _Run] = {}
        self._slot_freed = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._labels = (config.pool, self.handler.kind)
        #: The pool's fleet-wide rate limit (spec.rateLimit; README, "Rate limits and budgets").
        limit = config.rate_limit
        self.gate = RateGate(limiter or MemoryRateLimiter(), limit, self._release) if limit else None
        self.usage_metrics = UsageMetrics(self.metrics.registry, config.pool)

    @property
    def in_flight(self) -> int:
        return len(self._runs)

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        return "busy" if self._runs else "idle"

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the pool until `stop` is set, then drain and return."""
        self.log.info(
            "agent started: handler=%s concurrency=%d",
            self.handler.kind,
            self.config.concurrency,
            extra={"event": "agent_started"},
        )
        load_error = getattr(self.handler, "load_error", None)
        if load_error:
            self.log.error("handler is misconfigured; every task will fail with: %s", load_error)
        background = [
            asyncio.create_task(self._reap_periodically(), name="cf-reaper"),
            asyncio.create_task(self._publish_state(), name="cf-state"),
        ]
        try:
            await self._claim_loop(stop)
        finally:
            self.draining = True
            self._state_changed.set()
            await self._drain()
            for job in background:
                job.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await asyncio.wait_for(
                    self.queue.set_consumer_state(self.config.pool, self.agent_id, "stopped", 5.0), 2.0
                )
            if self._owns_handler:
                await self.handler.aclose()
            else:
                await self.handler.aclose_workspaces()
            _IDS_IN_USE.discard(self.agent_id)
            self.log.info("agent stopped", extra={"event": "agent_stopped"})

    # ---- claiming ----

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            free = self.config.concurrency - len(self._runs)
            if free <= 0:
                self._slot_freed.clear()
                await _wait_any(self._slot_freed, stop)
                continue
            try:
                leases = await self._claim(free, stop)
            except TRANSIENT_ERRORS as exc:
                self.connected = False
                self.log.warning(
                    "queue unreachable, retrying in %.1fs: %s", backoff, exc, extra={"event": "queue_error"}
                )
                await _wait_any(stop, timeout=backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.connected, backoff = True, 0.1
            if stop.is_set():
                await self._release(leases)
                return
            for lease in leases:
                self._start(lease)

    async def _claim(self, free: int, stop: asyncio.Event) -> list[Lease]:
        def claim(n: int, wait: float) -> Awaitable[list[Lease]]:
            return self.queue.claim_many(
                self.config.pool, self.agent_id, n, timeout=wait, lease_seconds=self.config.lease_seconds
            )

        if self.gate is None:
            return await claim(free, self.config.claim_wait)
        waited = self.gate.waited
        try:  # with a rate limit: capacity first, never a claim it cannot use (codeforge_agent.rate)
            return await self.gate.claim(claim, free, self.config.claim_wait, stop)
        finally:
            m = self.usage_metrics
            m.rate_wait.labels(m.namespace, m.pool, self.gate.limit.key).inc(self.gate.waited - waited)

    async def _release(self, leases: list[Lease]) -> None:
        """Give back tasks claimed after the stop: they were never started, so the attempt does not count."""
        for lease in leases:
            try:
                await self.queue.release(lease)
            except LeaseLostError:
                continue
            except TRANSIENT_ERRORS as exc:  # the lease will expire and the reaper requeues the task
                self.log.warning("could not release %s: %s", lease.id, exc)
                continue
            self.metrics.released.labels(*self._labels).inc()
            self._task_log(lease.task).info("released unstarted task", extra={"event": "released"})

    def _start(self, lease: Lease) -> None:
        run = _Run(lease)
        was_idle = not self._runs
        self._active[lease.id] = run
        job = asyncio.create_task(self._execute(run), name=f"cf-task-{lease.id}")
        self._runs[lease.id] = job
        self.metrics.in_flight.labels(*self._labels).inc()
        job.add_done_callback(lambda _: self._finished(lease.id))
        if was_idle:
            self._state_changed.set()

    def _finished(self, task_id: str) -> None:
        if self.gate is not None:
            self.gate.forget(task_id)  # a run that settled nothing keeps its reserved tokens charged
        self._runs.pop(task_id, None)
        self._active.pop(task_id, None)
        self.metrics.in_flight.labels(*self._labels).dec()
        self._slot_freed.set()
        if not self._runs:
            self._state_changed.set()

    # ---- one task ----

    def _task_log(self, task: Task) -> ContextAdapter:
        return self.log.bind(task_id=task.id, workflow=task.workflow, step=task.step, attempt=task.attempts)

    def _time_limit(self, task: Task) -> tuple[float | None, bool]:
        """Seconds the handler may run, and whether the task's deadline (not --task-timeout) sets it."""
        limit = self.config.task_timeout
        if task.deadline is not None:
            remaining = task.deadline - time.time()
            if limit is None or remaining <= limit:
                return remaining, True
        return limit, False

    async def _execute(self, run: _Run) -> None:
        task = run.lease.task
        log = self._task_log(task)
        self.metrics.claimed.labels(*self._labels).inc()
        self.metrics.claim_latency.labels(*self._labels).observe(max(0.0, time.time() - task.created_at))
        log.info("claimed", extra={"event": "claimed"})
        limit, by_deadline = self._time_limit(task)
        if limit is not None and limit <= 0:
            now = time.perf_counter()
            await self._fail(
                run, log, "the task's deadline passed before it started", False, 0.0, "timeout", now, now
            )
            return
        context = TaskContext(agent_id=self.agent_id, attempt=task.attempts, timeout=limit, log=log)
        started = time.perf_counter()
        handler_task = asyncio.create_task(self.handler(task, context), name=f"cf-handler-{task.id}")
        run.handler_task = handler_task
        heartbeat = asyncio.create_task(self._heartbeat(run, log), name=f"cf-heartbeat-{task.id}")
        try:
            done, _ = await asyncio.wait({handler_task}, timeout=limit)
            finished = time.perf_counter()
            self.metrics.handler_duration.labels(*self._labels).observe(finished - started)
            if not done:
                handler_task.cancel()
                await asyncio.wait({handler_task}, timeout=5.0)
                source = "task deadline" if by_deadline else "--task-timeout"
                message = f"handler timed out after {limit:.1f}s ({source}); it was cancelled"
                # Past the deadline a retry is moot; a --task-timeout may be a slow moment, so retry.
                await self._fail(run, log, message, not by_deadline, 0.0, "timeout", started, finished)
            elif handler_task.cancelled():
                await self._handle_cancelled(run, log, started, finished)
            elif (exc := handler_task.exception()) is not None:
                await self._handle_error(run, log, exc, started, finished)
            else:
                await self._complete(run, log, handler_task.result(), started, finished)
        finally:
            heartbeat.cancel()
            if not handler_task.done():  # we were cancelled ourselves (hard stop)
                handler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _handle_cancelled(
        self, run: _Run, log: ContextAdapter, started: float, finished: float
    ) -> None:
        if run.lost is not None:
            gone = "was cancelled" if isinstance(run.lost, TaskCancelledError) else "lease was lost"
            log.warning("task %s; handler stopped, nothing recorded", gone, extra={"event": "lease_lost"})
            self.metrics.failed.labels(*self._labels, "lease_lost").inc()
            self._timing(run, "lease_lost", started, finished)
        elif run.interrupted:
            message = f"agent {self.agent_id} shut down before the task finished (grace period over)"
            await self._hand_back(run, log, message, started, finished)
        else:
            await self._fail(run, log, "the handler was cancelled", True, 0.0, "error", started, finished)

    async def _handle_error(
        self, run: _Run, log: ContextAdapter, exc: BaseException, started: float, finished: float
    ) -> None:
        if isinstance(exc, RateLimitedError) and self.gate is not None:
            await self._rate_limited(run, log, exc, started, finished)
            return
        if isinstance(exc, HandlerError):
            await self._fail(
                run, log, exc.message, exc.retryable, exc.retry_delay, "error", started, finished
            )
            return
        # An unexpected exception is a bug in the handler or a passing fault: log the traceback, retry.
        log.error("handler raised", exc_info=exc, extra={"event": "handler_exception"})
        message = f"{self.handler.kind} handler raised {type(exc).__name__}: {exc}"
        await self._fail(run, log, message, True, 0.0, "error", started, finished)

    async def _complete(
        self, run: _Run, log: ContextAdapter, result: Any, started: float, finished: float
    ) -> None:
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = f"{self.handler.kind} handler returned a value that is not JSON: {exc}"
            await self._fail(run, log, message, False, 0.0, "error", started, finished)
            return
        try:
            usage = parse_usage(result.get("usage")) if isinstance(result, dict) else None
        except ValueError as exc:
            message = f"{self.handler.kind} handler reported a bad {exc} (README, Rate limits and budgets)"
            await self._fail(run, log, message, False, 0.0, "error", started, finished)
            return
        if await self._report(run, log, lambda lease: self.queue.complete(lease, result)):
            await self._account(run, log, usage, result)
            self.metrics.completed.labels(*self._labels).inc()
            self._timing(run, "succeeded", started, finished)
            log.info(
                "completed",
                extra={"event": "completed", "duration_ms": round((finished - started) * 1000, 3)},
            )

    async def _account(self, run: _Run, log: ContextAdapter, usage: Usage | None, result: Any) -> None:
        """Count a finished call's tokens and cost, and charge them to the rate-limit key."""
        if usage is not None:
            self.usage_metrics.record(usage, result.get("model") if isinstance(result, dict) else None)
        if self.gate is None:
            return
        try:
            await self.gate.settle(run.lease.id, usage.tokens if usage is not None else None)
        except TRANSIENT_ERRORS as exc:  # the reservation stays charged: the limit errs on the safe side
            log.warning("could not charge the call's tokens to %s: %s", self.gate.limit.key, exc)

    async def _rate_limited(
        self, run: _Run, log: ContextAdapter, exc: RateLimitedError, started: float, finished: float
    ) -> None:
        """A 429: pause the key for the whole fleet and give the task back unstarted (nothing spent)."""
        assert self.gate is not None
        try:
            paused = await self.gate.rate_limited(run.lease.id, exc.retry_after)
        except TRANSIENT_ERRORS as err:
            log.warning("could not pause %s for the fleet: %s", self.gate.limit.key, err)
            await self._fail(run, log, exc.message, True, exc.retry_after, "error", started, finished)
            return
        m = self.usage_metrics
        m.rate_limited.labels(m.namespace, m.pool, self.gate.limit.key).inc()

        async def give_back(lease: Lease) -> None:
            await self.queue.release(lease)

        if await self._report(run, log, give_back):
            self._timing(run, "rate_limited", started, finished)
            log.warning(
                "provider rate limit: %s paused %.1fs for every agent; task given back unstarted",
                self.gate.limit.key,
                paused,
                extra={"event": "rate_limited", "error": exc.message[:1000]},
            )

    async def _fail(
        self,
        run: _Run,
        log: ContextAdapter,
        message: str,
        retryable: bool,
        retry_delay: float,
        reason: str,
        started: float,
        finished: float,
    ) -> None:
        states: list[str] = []

        async def report(lease: Lease) -> None:
            state = await self.queue.fail(lease, message, retryable=retryable, retry_delay=retry_delay)
            states.append(str(state))

        if await self._report(run, log, report):
            self.metrics.failed.labels(*self._labels, reason).inc()
            state = states[-1] if states else "?"
            outcome = "interrupted" if reason == "shutdown" else "retry" if state == "queued" else "failed"
            self._timing(run, outcome, started, finished)
            kind = "retryable" if retryable else "permanent"
            log.warning(
                "failed (%s, now %s)", kind, state, extra={"event": "failed", "error": message[:1000]}
            )

    async def _hand_back(
        self, run: _Run, log: ContextAdapter, message: str, started: float, finished: float
    ) -> None:
        """A drain ran out of grace: give the started task back, spending a lost lease, not a retry."""
        states: list[str] = []

        async def report(lease: Lease) -> None:
            states.append(str(await self.queue.release(lease, started=True, reason=message)))

        if await self._report(run, log, report):
            self.metrics.failed.labels(*self._labels, "shutdown").inc()
            self._timing(run, "interrupted", started, finished)
            log.warning(
                "handed back unfinished (now %s)",
                states[-1],
                extra={"event": "interrupted", "error": message},
            )

    async def _report(self, run: _Run, log: ContextAdapter, call: Callable[[Lease], Awaitable[None]]) -> bool:
        """Record the outcome under the lease's fencing token; retry while the queue is unreachable."""
        delay = 0.1
        for attempt in range(REPORT_RETRIES):
            try:
                await call(run.lease)
                self.connected = True
                return True
            except LeaseLostError as exc:
                log.warning("result not recorded: %s", exc, extra={"event": "lease_lost"})
                self.metrics.failed.labels(*self._labels, "lease_lost").inc()
                return False
            except TRANSIENT_ERRORS as exc:
                self.connected = False
                if attempt == REPORT_RETRIES - 1:
                    log.error(
                        "result not recorded, the lease will expire and the task be redelivered: %s", exc
                    )
                    return False
                await asyncio.sleep(delay)
                delay *= 2
        return False

    def _timing(self, run: _Run, outcome: str, started: float, finished: float) -> None:
        if self.on_task_done is not None:
            self.on_task_done(
                TaskTiming(run.lease.id, outcome, run.claimed, started, finished, time.perf_counter())
            )

    async def _heartbeat(self, run: _Run, log: ContextAdapter) -> None:
        interval = self.config.lease_seconds / 3  # the claim asked for this lease length
        while True:
            await asyncio.sleep(interval)
            try:
                run.lease = await self.queue.heartbeat(run.lease)
                self.connected = True
            except LeaseLostError as exc:
                run.lost = exc
                if run.handler_task is not None:
                    run.handler_task.cancel()
                return
            except (
                TRANSIENT_ERRORS
            ) as exc:  # keep trying; if the lease expires meanwhile, we hear it next time
                self.connected = False
                log.warning("heartbeat failed: %s", exc, extra={"event": "heartbeat_error"})

    # ---- stopping ----

    async def _drain(self) -> None:
        if not self._runs:
            return
        runs = set(self._runs.values())
        self.log.info(
            "draining %d in-flight task(s), grace %.1fs",
            len(runs),
            self.config.grace_seconds,
            extra={"event": "draining"},
        )
        _, pending = await asyncio.wait(runs, timeout=self.config.grace_seconds)
        if not pending:
            return
        for run in list(self._active.values()):
            if run.handler_task is not None and not run.handler_task.done():
                run.interrupted = True
                run.handler_task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=10.0)
        for job in stuck:  # reporting hangs (queue gone): the leases will expire and the reaper requeues
            job.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)

    # ---- background ----

    async def _reap_periodically(self) -> None:
        """Requeue tasks whose lease expired (an agent was SIGKILLed); cheap and safe from every agent."""
        while True:
            await asyncio.sleep(self.config.reap_interval)
            try:
                count = await self.queue.reap(self.config.pool)
            except TRANSIENT_ERRORS as exc:
                self.log.debug("reap failed: %s", exc)
                continue
            if count:
                self.log.info("requeued %d task(s) whose lease expired", count, extra={"event": "reaped"})

    async def _publish_state(self) -> None:
        """Keep this agent's busy/idle record fresh, off the task path.

        A busy agent flips between busy and idle around every task; writing each flip would double its
        Redis round trips. Writes are spaced by STATE_SETTLE_SECONDS and carry the state of that moment,
        which is all the operator's scale-in choice needs.
        """
        published = ""
        while True:
            state = self.state
            if state != published or not self._state_changed.is_set():
                try:
                    await self.queue.set_consumer_state(
                        self.config.pool, self.agent_id, state, self.config.state_ttl
                    )
                    published = state
                except TRANSIENT_ERRORS as exc:
                    self.log.debug("could not record state %s: %s", state, exc)
            self._state_changed.clear()
            await asyncio.sleep(min(STATE_SETTLE_SECONDS, self.config.state_ttl / 3))
            await _wait_any(self._state_changed, timeout=self.config.state_ttl / 3)


def workspace_settings(config: AgentConfig) -> WorkspaceSettings:
    credentials = config.git_credentials_dir
    return WorkspaceSettings(
        root=config.workspace_root,
        credentials_dir=Path(credentials) if credentials else None,
        author_name=config.git_author_name,
        author_email=config.git_author_email,
        size_limit=config.workspace_size_limit,
        network_timeout=config.git_timeout,
    )


_IDS_IN_USE: set[str] = set()


def _reserve_id(wanted: str) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`... when another agent of this process already uses it."""
    candidate, n = wanted, 1
    while candidate in _IDS_IN_USE:
        n += 1
        candidate = f"{wanted}-{n}"
    _IDS_IN_USE.add(candidate)
    return candidate


async def _wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any event is set or the timeout passes."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_agent(
    queue: TaskQueue,
    config: AgentConfig,
    stop: asyncio.Event,
    handler: Handler | None = None,
    *,
    metrics: AgentMetrics | None = None,
    limiter: RateLimiter | None = None,
) -> None:
    """Run one agent in this event loop until `stop` is set (embedded mode: no process, no signals)."""
    await Agent(queue, config, handler, metrics=metrics, limiter=limiter).run(stop)
