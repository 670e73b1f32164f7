"""`spec.ttlSecondsAfterFinished`: a finished run's data goes after a while, and the Workflow too if asked.

That long after `status.completionTime`, the run's checkpoints, its result copy, its tasks' records in the
queue (ended ones; dead letters keep their own retention) and its step refs (through an agent, as on
deletion) are removed and the condition `Expired` says so; with `spec.ttlDeletesWorkflow`
the Workflow object is deleted instead (as a Job's TTL controller and Argo's `ttlStrategy` do). The
operator-wide default for Workflows that set no TTL is CODEFORGE_WORKFLOW_TTL_SECONDS (unset: kept).

The deadline comes from the stored status, so an operator restart or a failover keeps it. Every watch event
of a Workflow goes through `schedule_expiry`, which keeps one waiting task per finished Workflow with a TTL
(in `WorkflowRegistry.expiries`) and drops it once `Expired` is set, the deadline changes or the Workflow is
being deleted. Not a Kopf daemon: with any daemon on the kind, Kopf keeps the latest full object (managed
fields and all) of every Workflow for it, about 30 KiB each, and processes a spawning cause on every event.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.api import limits
from codeforge.api.agentpool import API_VERSION
from codeforge.api.workflow import PLURAL, WorkflowSpec, WorkflowSpecError, parse_workflow_spec
from codeforge.api.workflow_status import WorkflowPhase
from codeforge.controller.env import ConfigError
from codeforge.controller.kstatus import (
    ConditionValue,
    ObjectRef,
    condition_true,
    merge_conditions,
    now_rfc3339,
)
from codeforge.controller.kube import Kind
from codeforge.controller.services import Logger, OperatorServices
from codeforge.controller.workflow.registry import WorkflowRegistry
from codeforge.controller.workflow.results import result_key
from codeforge.controller.workflow.supervisor import WatchedWorkflow, first_of, qualified
from codeforge.controller.workflow.tracker import ConditionType
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.flag import Flag
from codeforge.orchestrator.records import forget_run_tasks
from codeforge.orchestrator.workspace import cleanup_task_id

TTL_ENV: Final = "CODEFORGE_WORKFLOW_TTL_SECONDS"
WORKFLOWS: Final = Kind(API_VERSION, PLURAL)
#: Wait before retrying a clean-up that failed (Redis or the API server away).
RETRY_SECONDS: Final = 5.0
EXPIRED: Final = ConditionType.EXPIRED


class Reason(enum.StrEnum):
    TTL_EXPIRED = "TTLExpired"


def default_ttl(env: Mapping[str, str] | None = None) -> int | None:
    """The operator-wide TTL (seconds) for Workflows that set none; None: keep their data."""
    raw = (os.environ if env is None else env).get(TTL_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{TTL_ENV}={raw!r}: expected whole seconds") from None
    if not 0 <= value <= limits.MAX_TTL_SECONDS:
        raise ConfigError(f"{TTL_ENV}={raw!r}: must be 0-{limits.MAX_TTL_SECONDS} seconds")
    return value


def expires_at(spec: Mapping[str, Any], status: Mapping[str, Any], default: int | None) -> float | None:
    """When a finished Workflow's data goes (Unix time); None when it is not finished, has no TTL, or its
    data is gone already."""
    phase = status.get("phase")
    if not phase or phase not in {p.value for p in WorkflowPhase if p.finished}:
        return None
    if condition_true(status.get("conditions"), EXPIRED):
        return None
    ttl = spec.get("ttlSecondsAfterFinished", default)
    finished = status.get("completionTime")
    if ttl is None or not isinstance(finished, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(finished.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() + float(ttl)


def expired_status(
    status: Mapping[str, Any], ttl: float, generation: int | None, kept: str | None
) -> dict[str, Any]:
    """The status patch that records the clean-up (and what it could not remove)."""
    message = (
        f"the run's checkpoints, result copy, task records and step refs were removed {ttl:g}s after it "
        "finished"
    )
    if kept:
        message += f"; {kept}"
    conditions = merge_conditions(
        status.get("conditions") or [],
        [ConditionValue(ConditionType.EXPIRED, True, Reason.TTL_EXPIRED, message)],
        now_rfc3339(),
        generation,
    )
    return {"status": {"conditions": conditions, "resultRef": None}}


async def _forget_tasks(
    runner: WorkflowRunner, ref: ObjectRef, spec: Mapping[str, Any]
) -> WorkflowSpec | None:
    """Remove the queue records of the run's ended tasks; the spec they ran under (None: an invalid spec,
    which ran nothing)."""
    try:
        parsed = qualified(parse_workflow_spec(dict(spec)), ref.namespace)
    except WorkflowSpecError:
        return None
    await forget_run_tasks(runner.queue, runner.checkpointer, ref.uid, parsed)
    return parsed


@dataclass
class Expiry:
    """A finished Workflow waiting for its TTL (`schedule_expiry`): when, what the clean-up needs (the
    status is the latest seen: the Expired condition merges into it), and the task that waits."""

    at: float
    ref: ObjectRef
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    generation: int | None
    stopped: Flag = field(default_factory=Flag)
    task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self.stopped.set()
        if self.task is not None:
            self.task.cancel()


def schedule_expiry(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    seen: WatchedWorkflow,
    default: int | None,
    log: Logger,
) -> None:
    """On every watch event: start waiting for the Workflow's TTL, keep waiting, or stop (Expired set, the
    deadline or spec changed, a retry made it run again, it is being deleted)."""
    uid = seen.ref.uid
    current = workflows.expiries.get(uid)
    at = None if seen.gone or seen.deleting else expires_at(seen.spec, seen.status, default)
    if current is not None and current.at == at and current.spec == seen.spec:
        current.status, current.generation = seen.status, seen.generation
        return
    if current is not None:
        current.stop()
        del workflows.expiries[uid]
    if at is None:
        return
    expiry = Expiry(at, seen.ref, seen.spec, seen.status, seen.generation)
    expiry.task = asyncio.create_task(
        expire_when_due(workflows, services, expiry, default, log), name=f"expiry of {seen.ref.key}"
    )
    workflows.expiries[uid] = expiry


async def expire_when_due(
    workflows: WorkflowRegistry,
    services: OperatorServices,
    expiry: Expiry,
    default: int | None,
    log: Logger,
) -> None:
    """Sleep until the TTL passes, remove the run's data (retried until it works), then delete the Workflow
    or mark it Expired. Stops early when `expiry.stopped` is set."""
    ref, spec, stopped = expiry.ref, expiry.spec, expiry.stopped
    await first_of(stopped.wait(), asyncio.sleep(max(expiry.at - time.time(), 0.0)))
    while not stopped.is_set():
        try:
            runner = await workflows.connect(services, log)
            tasks = await _forget_tasks(runner, ref, spec)  # first: the checkpoints name the tasks
            refs = await runner.forget(ref.uid, ref_cleanup_timeout=workflows.settings.ref_cleanup_timeout)
            if tasks is not None and tasks.workspace is not None:  # the step-ref cleanup task just ended
                for pool in {s.pool for s in tasks.steps}:
                    await runner.queue.forget(pool, [cleanup_task_id(ref.uid)])
            await workflows.results.delete(result_key(ref.uid))
            kept = None if refs.status in ("none", "deleted") else f"step refs kept: {refs.message}"
            if spec.get("ttlDeletesWorkflow"):
                await services.api().delete(WORKFLOWS, ref.namespace, ref.name)
            else:
                ttl = float(spec.get("ttlSecondsAfterFinished", default) or 0)
                patch = expired_status(expiry.status, ttl, expiry.generation, kept)
                await services.api().patch(WORKFLOWS, ref.namespace, f"{ref.name}/status", patch)
            log.info("TTL passed: the run's data was removed%s", "" if kept is None else f" ({kept})")
            return
        except Exception as exc:  # Redis or the API server away: the data stays until it works
            log.warning("TTL clean-up failed, retrying in %ss: %s", RETRY_SECONDS, exc)
            await first_of(stopped.wait(), asyncio.sleep(RETRY_SECONDS))
