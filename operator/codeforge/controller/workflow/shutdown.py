"""`spec.shutdown` on a Workflow this operator runs (`codeforge stop | terminate`; the semantics are in
`codeforge.orchestrator.shutdown`).

A change reaches the run active here through `request_shutdown`; a run that starts later (an operator restart,
a failover, a Workflow still Pending) reads spec.shutdown itself. After a restart under Terminate the tasks
the earlier operator dispatched are not known to the new run yet, so the supervisor cancels those the stored
status lists (`terminate_recorded`) before the run ends.
"""

from __future__ import annotations

from typing import Any

from codeforge.api.workflow import Shutdown
from codeforge.controller.services import Logger
from codeforge.controller.workflow.registry import WorkflowRegistry


def parse_shutdown(value: Any, log: Logger | None = None) -> Shutdown | None:
    """spec.shutdown as the run needs it; a value the CRD schema would refuse is ignored (with a warning)."""
    if value is None or value == "":
        return None
    try:
        return Shutdown(value)
    except ValueError:
        if log is not None:
            log.warning("spec.shutdown %r ignored: expected Stop or Terminate", value)
        return None


def request_shutdown(workflows: WorkflowRegistry, uid: str, value: Any, log: Logger) -> bool:
    """spec.shutdown changed: the run active here stops or terminates (and an Event says so); False when no
    run is active here (it reads spec.shutdown when it starts)."""
    mode = parse_shutdown(value, log)
    run = workflows.runs.get(uid)
    if mode is None or run is None:
        return False
    run.control.request_shutdown(mode)
    if run.tracker is not None:  # None until the run has read its status: it reads spec.shutdown then
        run.tracker.set_shutdown(mode)
    return True
