"""The operator's Prometheus metrics, served on CODEFORGE_METRICS_PORT (`/metrics`): AgentPools,
`codeforge_leader` (1 on the replica that acts, 0 on a standby) and the event loop's lag (`loop_lag`). The
chart's README lists every metric.

Pool series are labelled `pool="namespace/name"`; they are removed when a pool is deleted, so 20 pools keep
a few dozen series, not an ever-growing set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from codeforge.api.agentpool import Autoscaling

POOL_GAUGES: Final = {
    "queued": Gauge("codeforge_queue_depth", "Tasks ready to claim in the pool's queue.", ["pool"]),
    "heldBack": Gauge(
        "codeforge_queue_held_back",
        "Ready tasks waiting because their fair-share key holds its maxConcurrency leases.",
        ["pool"],
    ),
    "inFlight": Gauge("codeforge_queue_in_flight", "Tasks claimed by agents, under a lease.", ["pool"]),
    "dead": Gauge("codeforge_queue_dead", "Tasks in the pool's dead-letter queue.", ["pool"]),
    "oldestTaskAgeSeconds": Gauge(
        "codeforge_queue_oldest_task_age_seconds", "Age of the oldest ready task.", ["pool"]
    ),
    "desiredReplicas": Gauge("codeforge_agentpool_desired_replicas", "Agents the pool should run.", ["pool"]),
    "readyReplicas": Gauge("codeforge_agentpool_ready_replicas", "Agents ready.", ["pool"]),
    # From the agents' own reports in the queue (the consumer registry), so they count agents, not pods.
    "busyAgents": Gauge("codeforge_agentpool_busy_agents", "Agents running at least one task.", ["pool"]),
    "idleAgents": Gauge("codeforge_agentpool_idle_agents", "Agents waiting for a task.", ["pool"]),
}
UTILIZATION: Final = Gauge(
    "codeforge_agentpool_utilization_ratio", "Busy agents / (busy + idle agents); 0 with no agent.", ["pool"]
)
MAX_REPLICAS: Final = Gauge(
    "codeforge_agentpool_max_replicas", "The pool's spec.autoscaling.maxReplicas.", ["pool"]
)
SCALE_DECISIONS: Final = Counter(
    "codeforge_scale_decisions_total",
    "Replica changes applied to agent Deployments, by direction.",
    ["pool", "direction"],
)
LEADER: Final = Gauge(
    "codeforge_leader", "1 while this operator replica acts (holds the leader Lease), 0 while it stands by."
)
EVENT_LOOP_LAG: Final = Histogram(
    "codeforge_operator_event_loop_lag_seconds",
    "How late a timer fires on the operator's event loop (every 0.5 s): what any ready work waits first.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS: Final = Counter(
    "codeforge_reconcile_errors_total", "AgentPool reconciles that failed and will be retried.", ["pool"]
)


def observe_status(pool: str, status: dict[str, object]) -> None:
    for field, gauge in POOL_GAUGES.items():
        value = status.get(field)
        if isinstance(value, int | float):
            gauge.labels(pool=pool).set(value)
    busy, idle = status.get("busyAgents"), status.get("idleAgents")
    if isinstance(busy, int) and isinstance(idle, int):
        UTILIZATION.labels(pool=pool).set(busy / (busy + idle) if busy + idle else 0.0)


def observe_spec(pool: str, spec: Mapping[str, Any]) -> None:
    autoscaling = spec.get("autoscaling") or {}
    value = autoscaling.get("maxReplicas", Autoscaling.model_fields["max_replicas"].default)
    if isinstance(value, int):
        MAX_REPLICAS.labels(pool=pool).set(value)


def forget(pool: str) -> None:
    """Drop a deleted pool's series."""
    for gauge in (*POOL_GAUGES.values(), UTILIZATION, MAX_REPLICAS):
        try:
            gauge.remove(pool)
        except KeyError:
            pass
    for direction in ("up", "down"):
        try:
            SCALE_DECISIONS.remove(pool, direction)
        except KeyError:
            pass
    try:
        RECONCILE_ERRORS.remove(pool)
    except KeyError:
        pass
