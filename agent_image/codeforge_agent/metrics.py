"""Prometheus metrics of one agent, in a registry of its own so several in-process agents can coexist.

Every series carries `pool` and `handler` (one handler kind per agent), nothing per task; the table of what
each means is in agent_image/README.md ("Health and metrics").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Handler durations span milliseconds (echo) to an hour (an LLM agent run).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120)
#: Queue waits run from a millisecond (an idle pool) to many minutes (a backlog waiting for a scale-up).
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
LABELS = ("pool", "handler")


@dataclass
class _Clock:
    labels: tuple[str, ...]
    state: str = "stopped"
    since: float = field(default_factory=time.monotonic)
    busy: float = 0.0
    idle: float = 0.0


class StateTime(Collector):
    """Seconds agents spent busy (at least one task running) and idle (none; not counting a drain), summed
    per (pool, handler). Read at scrape time, so an hour-long task counts while it runs, not when it ends."""

    def __init__(self) -> None:
        self._agents: dict[str, _Clock] = {}

    def set(self, agent: str, labels: tuple[str, ...], state: str) -> None:
        """`state`: busy, idle, or anything else (draining, stopped), which counts as neither."""
        clock = self._agents.setdefault(agent, _Clock(labels))
        now = time.monotonic()
        self._add(clock, now)
        clock.state, clock.since = state, now

    @staticmethod
    def _add(clock: _Clock, now: float) -> None:
        if clock.state == "busy":
            clock.busy += now - clock.since
        elif clock.state == "idle":
            clock.idle += now - clock.since
        clock.since = now

    def collect(self) -> Iterator[Metric]:
        busy = CounterMetricFamily(
            "codeforge_agent_busy_seconds", "Seconds with at least one task running.", labels=LABELS
        )
        idle = CounterMetricFamily(
            "codeforge_agent_idle_seconds", "Seconds serving the pool with no task running.", labels=LABELS
        )
        totals: dict[tuple[str, ...], list[float]] = {}
        now = time.monotonic()
        for clock in self._agents.values():
            self._add(clock, now)  # stopped agents keep their totals: counters never go down
            sums = totals.setdefault(clock.labels, [0.0, 0.0])
            sums[0] += clock.busy
            sums[1] += clock.idle
        for labels, (busy_seconds, idle_seconds) in totals.items():
            busy.add_metric(list(labels), busy_seconds)
            idle.add_metric(list(labels), idle_seconds)
        yield busy
        yield idle


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        labels = LABELS
        r = self.registry
        self.claimed = Counter("codeforge_agent_tasks_claimed", "Tasks claimed.", labels, registry=r)
        self.completed = Counter(
            "codeforge_agent_tasks_completed", "Tasks completed successfully.", labels, registry=r
        )
        self.failed = Counter(
            "codeforge_agent_tasks_failed",
            "Tasks that failed; reason is error, timeout, lease_lost or shutdown.",
            (*labels, "reason"),
            registry=r,
        )
        self.released = Counter(
            "codeforge_agent_tasks_released", "Unstarted tasks given back.", labels, registry=r
        )
        self.in_flight = Gauge("codeforge_agent_tasks_in_flight", "Tasks running now.", labels, registry=r)
        self.slots = Gauge(
            "codeforge_agent_task_slots", "Tasks the agent may run at once (concurrency).", labels, registry=r
        )
        self.handler_duration = Histogram(
            "codeforge_agent_handler_duration_seconds",
            "Time inside the handler (the task's run time).",
            labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.claim_latency = Histogram(
            "codeforge_agent_claim_latency_seconds",
            "Time from the task's creation to its claim by this agent.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "codeforge_agent_queue_wait_seconds",
            "Time the task waited ready in the queue before this claim (enqueue, retry due or hand-back -> "
            "claim), by the queue server's clock.",
            labels,
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.state_time = StateTime()
        r.register(self.state_time)
