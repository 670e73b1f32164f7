"""The claim loop: keep up to `concurrency` tasks running, heartbeat each, report each result once.

Usable in-process (the orchestrator's embedded mode) through `Agent` / `run_agent`, and by the
`codeforge-agent` CLI, which adds signals, the health server and logging around it.

Per task: claim -> handler (cancelled at the task's deadline or --task-timeout) with a heartbeat beside
it -> complete or fail with the lease's fencing token: `execution.TaskExecution`.

Leases are as long as the agent's `lease_seconds` (its pool's spec.queue.leaseSeconds): the claim carries
it, so a task whose agent dies is redelivered after that, whatever the task says.

Stop (SIGTERM): stop claiming, give back any claim that arrives after the stop (nothing spent), let
in-flight tasks run for `grace_seconds`, then cancel the rest and hand them back at once: that spends one of
the task's lost-lease budget, like an agent death, never the handler's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from codeforge.api.task import Task
from codeforge.queue import Lease, LeaseLostError, TaskQueue
from codeforge.queue.ratelimit import MemoryRateLimiter, RateLimiter
from codeforge.workspace import WorkspaceSettings
from codeforge_agent.config import AgentConfig
from codeforge_agent.execution import TRANSIENT_ERRORS, TaskExecution, TaskTiming
from codeforge_agent.handlers import Handler, build_handler
from codeforge_agent.handlers.workspace import WorkspaceHandler
from codeforge_agent.log_setup import ContextAdapter, get_logger
from codeforge_agent.metrics import AgentMetrics
from codeforge_agent.rate import RateGate
from codeforge_agent.usage_metrics import UsageMetrics

STATE_SETTLE_SECONDS = 0.1


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
        self._active: dict[str, TaskExecution] = {}
        self._slot_freed = asyncio.Event()
        self._state_changed = asyncio.Event()
        self.metric_labels = (config.pool, self.handler.kind)
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
        self.metrics.slots.labels(*self.metric_labels).inc(self.config.concurrency)
        self._clock("idle")
        background = [
            asyncio.create_task(self._reap_periodically(), name="cf-reaper"),
            asyncio.create_task(self._publish_state(), name="cf-state"),
        ]
        try:
            await self._claim_loop(stop)
        finally:
            self.draining = True
            self._state_changed.set()
            if not self._runs:
                self._clock("draining")
            await self._drain()
            self._clock("stopped")
            self.metrics.slots.labels(*self.metric_labels).dec(self.config.concurrency)
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
            self.metrics.released.labels(*self.metric_labels).inc()
            self.task_log(lease.task).info("released unstarted task", extra={"event": "released"})

    def task_log(self, task: Task) -> ContextAdapter:
        return self.log.bind(task_id=task.id, workflow=task.workflow, step=task.step, attempt=task.attempts)

    def _start(self, lease: Lease) -> None:
        run = TaskExecution(self, lease)
        was_idle = not self._runs
        self._active[lease.id] = run
        job = asyncio.create_task(run.execute(), name=f"cf-task-{lease.id}")
        self._runs[lease.id] = job
        self.metrics.in_flight.labels(*self.metric_labels).inc()
        job.add_done_callback(lambda _: self._finished(lease.id))
        if was_idle:
            self._state_changed.set()
            self._clock("busy")

    def _finished(self, task_id: str) -> None:
        if self.gate is not None:
            self.gate.forget(task_id)  # a run that settled nothing keeps its reserved tokens charged
        self._runs.pop(task_id, None)
        self._active.pop(task_id, None)
        self.metrics.in_flight.labels(*self.metric_labels).dec()
        self._slot_freed.set()
        if not self._runs:
            self._state_changed.set()
            self._clock("draining" if self.draining else "idle")

    def _clock(self, state: str) -> None:
        self.metrics.state_time.set(self.agent_id, self.metric_labels, state)

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
