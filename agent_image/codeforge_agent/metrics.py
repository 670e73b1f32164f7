"""Prometheus metrics of one agent, in a registry of its own so several in-process agents can coexist."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Handler durations span milliseconds (echo) to an hour (an LLM agent run).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120)


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        labels = ("pool", "handler")
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
        self.handler_duration = Histogram(
            "codeforge_agent_handler_duration_seconds",
            "Time inside the handler.",
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
