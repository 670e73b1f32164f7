"""codeforge_workflows{phase}: each Workflow counted once, under its latest phase, until it is forgotten."""

from __future__ import annotations

import uuid

from codeforge.controller.workflow import metrics


def counts() -> dict[str, float]:
    return {phase: metrics.WORKFLOWS.labels(phase=phase)._value.get() for phase in ("Running", "Succeeded")}


def test_a_workflow_is_counted_once_under_its_latest_phase_until_forgotten() -> None:
    before = counts()
    uids = [str(uuid.uuid4()) for _ in range(3)]
    for uid in uids:
        metrics.observe_phase(uid, "Running")
        metrics.observe_phase(uid, "Running")  # the same phase again: no change
        metrics.observe_phase(uid, None)  # no phase: no change
    metrics.observe_phase(uids[0], "Succeeded")
    after = counts()
    assert after["Running"] - before["Running"] == 2
    assert after["Succeeded"] - before["Succeeded"] == 1
    for uid in uids:
        metrics.forget(uid)
    metrics.forget(uids[0])  # forgetting twice changes nothing
    assert counts() == before
