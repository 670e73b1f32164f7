"""The operator's Prometheus metrics for Workflows (served with the AgentPool ones on CODEFORGE_METRICS_PORT).

`codeforge_workflows{phase}` counts the Workflows this operator knows by phase (each Workflow is counted once,
under its latest phase, until it is deleted); step durations are one histogram by outcome, so the series stay
few however many Workflows run.
"""

from __future__ import annotations

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

_phases: dict[str, str] = {}


def observe_phase(uid: str, phase: str | None) -> None:
    if phase is None or _phases.get(uid) == phase:
        return
    _phases[uid] = phase
    _publish()


def forget(uid: str) -> None:
    if _phases.pop(uid, None) is not None:
        _publish()


def _publish() -> None:
    counts = {phase.value: 0 for phase in WorkflowPhase}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        WORKFLOWS.labels(phase=phase).set(count)
