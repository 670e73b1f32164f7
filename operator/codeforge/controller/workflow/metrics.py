"""The operator's Prometheus metrics for Workflows (served with the AgentPool ones on CODEFORGE_METRICS_PORT).

`codeforge_workflows{phase}` counts the Workflows this operator knows by phase (each Workflow is counted once,
under its latest phase, until it is deleted); durations are histograms by outcome or final phase, so the
series stay few however many Workflows run. The chart's README lists every metric.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from codeforge.api.workflow_status import WorkflowPhase

WORKFLOWS: Final = Gauge("codeforge_workflows", "Workflows by phase.", ["phase"])
STEP_SECONDS: Final = Histogram(
    "codeforge_workflow_step_duration_seconds",
    "Duration of finished workflow steps (all attempts and fan-out parts), by outcome.",
    ["outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
RUN_ERRORS: Final = Counter(
    "codeforge_workflow_run_errors_total", "Workflow runs interrupted by an error and resumed later."
)
WORKFLOW_SECONDS: Final = Histogram(
    "codeforge_workflow_duration_seconds",
    "Start -> end of Workflows that finished, by final phase.",
    ["phase"],
    buckets=(1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
RESULT_NOTIFICATION_SECONDS: Final = Histogram(
    "codeforge_result_notification_latency_seconds",
    "A task's end (recorded by the queue) -> the Workflow run awaiting it woken by the queue's notification.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
ADMISSION_WAIT_SECONDS: Final = Histogram(
    "codeforge_workflow_admission_wait_seconds",
    "A Workflow run about to start or resume (woken by a task's end) -> its turn to go on "
    "(CODEFORGE_WORKFLOW_BUSY_RUNS runs at once; 0 when it had one at once).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STEP_DISPATCH_SECONDS: Final = Histogram(
    "codeforge_workflow_step_dispatch_latency_seconds",
    "A step became ready (its predecessor joined, or the run began) -> its task's enqueue returned.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
AGENT_BUSY_SECONDS: Final = Counter(
    "codeforge_workflow_agent_busy_seconds",
    "Agent time spent on Workflow tasks (claim -> end of each delivery that ended a task).",
)
COORDINATION_EFFICIENCY: Final = Histogram(
    "codeforge_workflow_coordination_efficiency_ratio",
    "Per finished Workflow run: agent busy time on its tasks / its wall time (over 1 when steps fan out).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.5, 2, 4, 8, 16),
)

_phases: dict[str, str] = {}


def observe_phase(uid: str, phase: str | None) -> None:
    """Count the Workflow under its latest phase: two gauge steps, not a recount of every Workflow (that
    made each phase change cost O(Workflows): quadratic when 10,000 start together)."""
    if phase is None:
        return
    before = _phases.get(uid)
    if before == phase:
        return
    _phases[uid] = phase
    if before is not None:
        WORKFLOWS.labels(phase=before).dec()
    WORKFLOWS.labels(phase=phase).inc()


def observe_task(busy_seconds: float | None, notification_latency: float | None) -> None:
    if busy_seconds is not None:
        AGENT_BUSY_SECONDS.inc(busy_seconds)
    if notification_latency is not None:
        RESULT_NOTIFICATION_SECONDS.observe(notification_latency)


def observe_finished(phase: str, run_seconds: float, busy: float | None, resumed_from: str | None) -> None:
    """A Workflow ended. `run_seconds`: this process's run of it; a run resumed after an operator restart
    counts from status.startTime (`resumed_from`, RFC 3339, whole seconds) instead, and has no efficiency
    (the agent time before the restart is not known here)."""
    duration = run_seconds
    if resumed_from:
        try:
            duration = time.time() - datetime.fromisoformat(resumed_from).timestamp()
        except ValueError:
            pass
    WORKFLOW_SECONDS.labels(phase=phase).observe(max(duration, 0.0))
    if busy is not None and not resumed_from and run_seconds > 0:
        COORDINATION_EFFICIENCY.observe(busy / run_seconds)


def forget(uid: str) -> None:
    before = _phases.pop(uid, None)
    if before is not None:
        WORKFLOWS.labels(phase=before).dec()


# Every phase is exported (at 0 until a Workflow has it), so dashboards see the series from the start.
for _phase in WorkflowPhase:
    WORKFLOWS.labels(phase=_phase.value)
