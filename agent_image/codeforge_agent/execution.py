"""One claimed task's life in the agent: its handler (cancelled at the task's deadline or --task-timeout) with
a heartbeat beside it, then its outcome recorded once, under the lease's fencing token.

A lost lease (expired and redelivered, or the task cancelled) cancels the handler and records nothing: the
new owner's result is the one that counts. A drain that runs out of grace hands the task back (see `loop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from codeforge.api.task import Task, encode_result
from codeforge.api.usage import Usage, parse_usage
from codeforge.queue import Lease, LeaseLostError, QueueError, TaskCancelledError
from codeforge_agent.handlers import HandlerError, RateLimitedError, TaskContext
from codeforge_agent.log_setup import ContextAdapter

if TYPE_CHECKING:
    from codeforge_agent.loop import Agent


#: Errors of a queue call that the loop logs and retries (with backoff) instead of dying: the queue being
#: unreachable, or any other queue error. LeaseLostError is a QueueError too, so it is caught before these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (QueueError, ConnectionError, OSError, TimeoutError)
REPORT_RETRIES = 5


@dataclass(frozen=True, slots=True)
class TaskTiming:
    """Where one task's time went inside the agent (perf_counter seconds); for benchmarks and tests."""

    task_id: str
    outcome: str  # succeeded | failed | retry | lease_lost | interrupted | rate_limited
    claimed: float
    started: float
    finished: float
    recorded: float


class TaskExecution:
    """A task this agent is working on: `execute()` runs it to its recorded end; the agent's drain reads
    `handler_task` and sets `interrupted`."""

    def __init__(self, agent: Agent, lease: Lease) -> None:
        self.agent = agent
        self.lease = lease
        self.metric_labels = agent.metric_labels
        self.handler_task: asyncio.Task[Any] | None = None
        self.lost: LeaseLostError | None = None
        self.interrupted = False
        self.claimed = time.perf_counter()

    def _time_limit(self, task: Task) -> tuple[float | None, bool]:
        """Seconds the handler may run, and whether the task's deadline (not --task-timeout) sets it."""
        limit = self.agent.config.task_timeout
        if task.deadline is not None:
            remaining = task.deadline - time.time()
            if limit is None or remaining <= limit:
                return remaining, True
        return limit, False

    async def execute(self) -> None:
        """Run the handler under its time limit with a heartbeat beside it, then record the outcome."""
        task = self.lease.task
        log = self.agent.task_log(task)
        self.agent.metrics.claimed.labels(*self.metric_labels).inc()
        self.agent.metrics.claim_latency.labels(*self.metric_labels).observe(
            max(0.0, time.time() - task.created_at)
        )
        self.agent.metrics.queue_wait.labels(*self.metric_labels).observe(self.lease.queued_seconds)
        log.info("claimed", extra={"event": "claimed"})
        limit, by_deadline = self._time_limit(task)
        if limit is not None and limit <= 0:
            now = time.perf_counter()
            await self._fail(
                log, "the task's deadline passed before it started", False, 0.0, "timeout", now, now
            )
            return
        context = TaskContext(agent_id=self.agent.agent_id, attempt=task.attempts, timeout=limit, log=log)
        started = time.perf_counter()
        handler_task = asyncio.create_task(self.agent.handler(task, context), name=f"cf-handler-{task.id}")
        self.handler_task = handler_task
        heartbeat = asyncio.create_task(self._heartbeat(log), name=f"cf-heartbeat-{task.id}")
        try:
            done, _ = await asyncio.wait({handler_task}, timeout=limit)
            finished = time.perf_counter()
            self.agent.metrics.handler_duration.labels(*self.metric_labels).observe(finished - started)
            if not done:
                handler_task.cancel()
                await asyncio.wait({handler_task}, timeout=5.0)
                source = "task deadline" if by_deadline else "--task-timeout"
                message = f"handler timed out after {limit:.1f}s ({source}); it was cancelled"
                # Past the deadline a retry is moot; a --task-timeout may be a slow moment, so retry.
                await self._fail(log, message, not by_deadline, 0.0, "timeout", started, finished)
            elif handler_task.cancelled():
                await self._handle_cancelled(log, started, finished)
            elif (exc := handler_task.exception()) is not None:
                await self._handle_error(log, exc, started, finished)
            else:
                await self._complete(log, handler_task.result(), started, finished)
        finally:
            heartbeat.cancel()
            if not handler_task.done():  # we were cancelled ourselves (hard stop)
                handler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _handle_cancelled(self, log: ContextAdapter, started: float, finished: float) -> None:
        if self.lost is not None:
            gone = "was cancelled" if isinstance(self.lost, TaskCancelledError) else "lease was lost"
            log.warning("task %s; handler stopped, nothing recorded", gone, extra={"event": "lease_lost"})
            self.agent.metrics.failed.labels(*self.metric_labels, "lease_lost").inc()
            self._timing("lease_lost", started, finished)
        elif self.interrupted:
            message = f"agent {self.agent.agent_id} shut down before the task finished (grace period over)"
            await self._hand_back(log, message, started, finished)
        else:
            await self._fail(log, "the handler was cancelled", True, 0.0, "error", started, finished)

    async def _handle_error(
        self, log: ContextAdapter, exc: BaseException, started: float, finished: float
    ) -> None:
        if isinstance(exc, RateLimitedError) and self.agent.gate is not None:
            await self._rate_limited(log, exc, started, finished)
            return
        if isinstance(exc, HandlerError):
            await self._fail(log, exc.message, exc.retryable, exc.retry_delay, "error", started, finished)
            return
        # An unexpected exception is a bug in the handler or a passing fault: log the traceback, retry.
        log.error("handler raised", exc_info=exc, extra={"event": "handler_exception"})
        message = f"{self.agent.handler.kind} handler raised {type(exc).__name__}: {exc}"
        await self._fail(log, message, True, 0.0, "error", started, finished)

    async def _complete(self, log: ContextAdapter, result: Any, started: float, finished: float) -> None:
        try:
            encode_result(result)
        except ValueError as exc:  # the queue would refuse it: the task fails, saying why (not retried)
            message = f"{self.agent.handler.kind} handler returned a result the queue refuses: {exc}"
            await self._fail(log, message, False, 0.0, "error", started, finished)
            return
        try:
            usage = parse_usage(result.get("usage")) if isinstance(result, dict) else None
        except ValueError as exc:
            message = (
                f"{self.agent.handler.kind} handler reported a bad {exc} (README, Rate limits and budgets)"
            )
            await self._fail(log, message, False, 0.0, "error", started, finished)
            return
        if await self._report(log, lambda lease: self.agent.queue.complete(lease, result)):
            await self._account(log, usage, result)
            self.agent.metrics.completed.labels(*self.metric_labels).inc()
            self._timing("succeeded", started, finished)
            log.info(
                "completed",
                extra={"event": "completed", "duration_ms": round((finished - started) * 1000, 3)},
            )

    async def _account(self, log: ContextAdapter, usage: Usage | None, result: Any) -> None:
        """Count a finished call's tokens and cost, and charge them to the rate-limit key."""
        if usage is not None:
            self.agent.usage_metrics.record(usage, result.get("model") if isinstance(result, dict) else None)
        gate = self.agent.gate
        if gate is None:
            return
        try:
            await gate.settle(self.lease.id, usage.tokens if usage is not None else None)
        except TRANSIENT_ERRORS as exc:  # the reservation stays charged: the limit errs on the safe side
            log.warning("could not charge the call's tokens to %s: %s", gate.limit.key, exc)

    async def _rate_limited(
        self, log: ContextAdapter, exc: RateLimitedError, started: float, finished: float
    ) -> None:
        """A 429: pause the key for the whole fleet and give the task back unstarted (nothing spent)."""
        gate = self.agent.gate
        assert gate is not None
        try:
            paused = await gate.rate_limited(self.lease.id, exc.retry_after)
        except TRANSIENT_ERRORS as err:
            log.warning("could not pause %s for the fleet: %s", gate.limit.key, err)
            await self._fail(log, exc.message, True, exc.retry_after, "error", started, finished)
            return
        m = self.agent.usage_metrics
        m.rate_limited.labels(m.namespace, m.pool, gate.limit.key).inc()

        async def give_back(lease: Lease) -> None:
            await self.agent.queue.release(lease)

        if await self._report(log, give_back):
            self._timing("rate_limited", started, finished)
            log.warning(
                "provider rate limit: %s paused %.1fs for every agent; task given back unstarted",
                gate.limit.key,
                paused,
                extra={"event": "rate_limited", "error": exc.message[:1000]},
            )

    async def _fail(
        self,
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
            state = await self.agent.queue.fail(lease, message, retryable=retryable, retry_delay=retry_delay)
            states.append(str(state))

        if await self._report(log, report):
            self.agent.metrics.failed.labels(*self.metric_labels, reason).inc()
            state = states[-1] if states else "?"
            outcome = "interrupted" if reason == "shutdown" else "retry" if state == "queued" else "failed"
            self._timing(outcome, started, finished)
            kind = "retryable" if retryable else "permanent"
            log.warning(
                "failed (%s, now %s)", kind, state, extra={"event": "failed", "error": message[:1000]}
            )

    async def _hand_back(self, log: ContextAdapter, message: str, started: float, finished: float) -> None:
        """A drain ran out of grace: give the started task back, spending a lost lease, not a retry."""
        states: list[str] = []

        async def report(lease: Lease) -> None:
            states.append(str(await self.agent.queue.release(lease, started=True, reason=message)))

        if await self._report(log, report):
            self.agent.metrics.failed.labels(*self.metric_labels, "shutdown").inc()
            self._timing("interrupted", started, finished)
            log.warning(
                "handed back unfinished (now %s)",
                states[-1],
                extra={"event": "interrupted", "error": message},
            )

    async def _report(self, log: ContextAdapter, call: Callable[[Lease], Awaitable[None]]) -> bool:
        """Record the outcome under the lease's fencing token; retry while the queue is unreachable."""
        delay = 0.1
        for attempt in range(REPORT_RETRIES):
            try:
                await call(self.lease)
                self.agent.connected = True
                return True
            except LeaseLostError as exc:
                log.warning("result not recorded: %s", exc, extra={"event": "lease_lost"})
                self.agent.metrics.failed.labels(*self.metric_labels, "lease_lost").inc()
                return False
            except TRANSIENT_ERRORS as exc:
                self.agent.connected = False
                if attempt == REPORT_RETRIES - 1:
                    log.error(
                        "result not recorded, the lease will expire and the task be redelivered: %s", exc
                    )
                    return False
                await asyncio.sleep(delay)
                delay *= 2
        return False

    def _timing(self, outcome: str, started: float, finished: float) -> None:
        if self.agent.on_task_done is not None:
            self.agent.on_task_done(
                TaskTiming(self.lease.id, outcome, self.claimed, started, finished, time.perf_counter())
            )

    async def _heartbeat(self, log: ContextAdapter) -> None:
        interval = self.agent.config.lease_seconds / 3  # the claim asked for this lease length
        while True:
            await asyncio.sleep(interval)
            try:
                self.lease = await self.agent.queue.heartbeat(self.lease)
                self.agent.connected = True
            except LeaseLostError as exc:
                self.lost = exc
                if self.handler_task is not None:
                    self.handler_task.cancel()
                return
            except (
                TRANSIENT_ERRORS
            ) as exc:  # keep trying; if the lease expires meanwhile, we hear it next time
                self.agent.connected = False
                log.warning("heartbeat failed: %s", exc, extra={"event": "heartbeat_error"})
