"""The one place that decides, from the Workflows' watch events, which runs this operator drives.

No Kopf daemon (task, stop flag, filter, per-object bookkeeping) per Workflow: Kopf hands every watch event of
a Workflow to `observe()`, which

- validates the spec once per change (cached; an invalid spec gives the `Invalid` status, once);
- starts the run of a Workflow that wants one (not finished, or a retry asked for) as a task owned by the
  registry (`WorkflowRegistry.runs`), which runs until the run ends, the Workflow is deleted (the finalizer's
  `cleanup` cancels it) or the operator stops (`WorkflowRegistry.close`: the tasks stay with the agents and
  the next operator re-attaches to them from the checkpoint);
- hands changes of a live run's approval annotations, `spec.suspend`, `spec.shutdown` and `spec.budget` to it;
- remembers a run that ended here until its final status is seen, so stale events never start it again
  (compared by phase, retryToken and completionTime: Kopf may batch the final status with a retry
  annotation into one event, which must start the retry).

Task results wake the runs through the queue's shared result listener (one Pub/Sub connection), not a
poll per Workflow. Everything here is plain functions and data: `handlers.watch_workflow` is the Kopf side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from codeforge.api.usage import Budget
from codeforge.api.workflow import WorkflowSpec, WorkflowSpecError, parse_workflow_spec
from codeforge.controller.kstatus import condition_message, condition_true
from codeforge.controller.services import Logger, OperatorServices
from codeforge.controller.workflow import metrics as workflow_metrics
from codeforge.controller.workflow.access import check_access
from codeforge.controller.workflow.registry import LiveWorkflow, WorkflowRegistry, landmark
from codeforge.controller.workflow.shutdown import request_shutdown
from codeforge.controller.workflow.supervisor import WatchedWorkflow, supervise, wants_run
from codeforge.controller.workflow.tracker import ConditionType, invalid_status, pending_status
from codeforge.orchestrator import WorkflowHandle

JSON = dict[str, Any]
__all__ = ["Reaction", "WatchedWorkflow", "observe", "refresh", "start"]


@dataclass(frozen=True, slots=True)
class Reaction:
    """What Kopf should do with the object: a status patch, and a warning Event for an invalid spec."""

    status: JSON | None = None
    invalid: str | None = None


async def observe(
    workflows: WorkflowRegistry, services: OperatorServices, seen: WatchedWorkflow, log: Logger
) -> Reaction:
    """React to one watch event of a Workflow (see the module's docstring)."""
    uid = seen.ref.uid
    if seen.gone:
        workflows.forget(uid)
        return Reaction()
    status = seen.status
    workflow_metrics.observe_phase(uid, status.get("phase"))
    problem = await _problem(workflows, services, seen, log)
    if problem is None:  # not known yet (the API server did not answer): the next event checks again
        return Reaction()
    conditions = status.get("conditions")
    if problem:
        if condition_message(conditions, ConditionType.INVALID) == problem:
            return Reaction()  # reported already
        log.error("invalid Workflow spec:\n%s", problem)
        workflow_metrics.observe_phase(uid, "Failed")
        return Reaction(invalid_status(status, problem, seen.generation), invalid=problem)
    if condition_true(conditions, ConditionType.INVALID):  # fixed: Pending; the run starts on its event
        steps = len(seen.spec.get("steps") or [])
        return Reaction(pending_status(status, steps, seen.generation))
    live = workflows.runs.get(uid)
    if live is not None:
        refresh(workflows, live, seen, log)
        return Reaction()
    if uid in workflows.ended:
        final = workflows.ended[uid]
        if (final is not None and landmark(status) == final) or not wants_run(seen.annotations, status):
            del workflows.ended[uid]  # its final status is in: a retry may start it again
    if uid not in workflows.ended and not seen.deleting and wants_run(seen.annotations, status):
        start(workflows, services, seen, log)
    return Reaction()


async def _problem(
    workflows: WorkflowRegistry, services: OperatorServices, seen: WatchedWorkflow, log: Logger
) -> str | None:
    """The spec's problems ("" when it can run), checked once per spec; None when not known."""
    uid = seen.ref.uid
    cached = workflows.checked.get(uid)
    if cached is not None and cached[0] == seen.spec:  # not by generation: not every server bumps it
        return cached[1]
    parsed: WorkflowSpec | None = None
    try:
        parsed = parse_workflow_spec(dict(seen.spec))
        await check_access(services.api(), seen.ref.namespace, parsed)
        problem = ""
    except WorkflowSpecError as exc:
        parsed, problem = None, str(exc)
    except Exception as exc:  # the API server is unreachable: decide on a later event
        log.warning("cannot check the access to the Workflow's pools yet: %s", exc)
        return None
    workflows.checked[uid] = (seen.spec, problem, parsed)
    return problem


def start(
    workflows: WorkflowRegistry, services: OperatorServices, seen: WatchedWorkflow, log: Logger
) -> LiveWorkflow:
    """Start (or resume, or retry) the run: a task of the registry's, not a Kopf daemon."""
    control = WorkflowHandle()
    live = LiveWorkflow(control, annotations=dict(seen.annotations), spec=dict(seen.spec))
    if live.spec.get("suspend"):
        control.suspend()
    workflows.set_approvals(control, live.annotations, log)  # decisions made while no operator ran
    workflows.runs[seen.ref.uid] = live
    live.task = asyncio.create_task(
        supervise(workflows, services, seen, live, log), name=f"workflow {seen.ref.key}"
    )
    return live


def refresh(workflows: WorkflowRegistry, live: LiveWorkflow, seen: WatchedWorkflow, log: Logger) -> None:
    """Hand a live run what changed since the last event: approval decisions, spec.suspend, spec.shutdown
    (a run that starts later reads it from its spec), spec.budget."""
    uid = seen.ref.uid
    if seen.annotations != live.annotations:
        live.annotations = dict(seen.annotations)
        workflows.set_approvals(uid, live.annotations, log)
    suspend, budget = bool(seen.spec.get("suspend")), seen.spec.get("budget")
    if suspend != bool(live.spec.get("suspend")):
        workflows.set_suspended(uid, suspend)
    shutdown = seen.spec.get("shutdown")
    if shutdown != live.spec.get("shutdown"):
        request_shutdown(workflows, uid, shutdown, log)
    if budget != live.spec.get("budget"):
        try:
            parsed = Budget.model_validate(budget, by_alias=True, by_name=False) if budget else None
        except ValidationError as exc:  # the CRD schema refuses this; a stale schema must not crash us
            log.warning("spec.budget ignored: %s", exc.errors()[0]["msg"])
        else:
            workflows.set_budget(uid, parsed)
    if seen.spec != live.spec:  # else keep the copy held: every event decodes a new body, whose spec a copy
        live.spec = dict(seen.spec)  # would keep alive beside the validated one (`checked`)
