"""Which queue task records belong to a run: what a finished Workflow's TTL clean-up removes with its
checkpoints (`WorkflowRunner.forget_tasks`).

Task ids are deterministic (`dispatch.task_id`), so they follow from the run's checkpoint: every finished step
visit in `history` (its parts and attempts), the parts of a visit that had not joined yet (a stopped or
cancelled run), the next visit of every step (a task cut off before any record of it was written), and the
workspace system tasks. Ids that were never used cost one lookup each and remove nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from codeforge.api.workflow import WorkflowSpec
from codeforge.orchestrator import workspace as ws
from codeforge.orchestrator.dispatch import task_id
from codeforge.queue import TaskQueue
from codeforge.queue.base import MAX_PURGE_IDS


async def forget_run_tasks(
    queue: TaskQueue, checkpointer: BaseCheckpointSaver[Any], workflow: str, spec: WorkflowSpec
) -> int:
    """Delete the queue records of the run's ended tasks (before its checkpoints go: they name them).
    Returns how many went; a run without a checkpoint has none to name."""
    latest = await checkpointer.aget_tuple({"configurable": {"thread_id": workflow}})
    if latest is None:
        return 0
    values = latest.checkpoint.get("channel_values") or {}
    removed = 0
    for pool, ids in run_task_ids(workflow, spec, values).items():
        listed = sorted(ids)
        for start in range(0, len(listed), MAX_PURGE_IDS):
            removed += await queue.forget(pool, listed[start : start + MAX_PURGE_IDS])
    return removed


def run_task_ids(workflow: str, spec: WorkflowSpec, values: Mapping[str, Any]) -> dict[str, set[str]]:
    """pool -> the ids of the run's tasks in that pool (the run's latest checkpoint `values`)."""
    pools = {s.name: s.pool for s in spec.steps}
    retries = {s.name: s.retries.max + 1 for s in spec.steps}
    width = {s.name: s.parallel or 1 for s in spec.steps}
    ids: dict[str, set[str]] = {pool: set() for pool in pools.values()}

    def add(step: str, visit: int, parts: int, attempts: int) -> None:
        if step not in pools:
            return
        for index in range(max(parts, 1)):
            for attempt in range(max(attempts, 1)):
                ids[pools[step]].add(task_id(workflow, step, visit, index, attempt))

    for record in _dicts(values.get("history")):
        step, visit = str(record.get("step", "")), _int(record.get("visit"))
        add(step, visit, _int(record.get("parts")), _int(record.get("attempts")))
        width[step] = max(width.get(step, 1), _int(record.get("parts")))
    for parts in _dicts((values.get("parts") or {}).values()):
        for part in _dicts(parts.values()):
            fields = str(part.get("task_id", "")).split("/")
            if len(fields) == 5 and fields[2].startswith("v") and fields[2][1:].isdigit():
                add(fields[1], int(fields[2][1:]), _int(part.get("index")) + 1, _int(part.get("attempts")))
    visits = values.get("visits") or {}
    for step in pools:
        add(step, _int(visits.get(step)) + 1, width.get(step, 1), retries[step])
    if spec.workspace is not None:
        system = [ws.resolve_task_id(workflow), ws.publish_task_id(workflow), ws.cleanup_task_id(workflow)]
        for record in _dicts(values.get("history")):
            system.append(ws.merge_task_id(workflow, str(record.get("step", "")), _int(record.get("visit"))))
        for pool in ids:  # which pool ran a system task is not recorded: the ids are unique, try each
            ids[pool].update(system)
    return ids


def _dicts(items: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(items, Iterable) and not isinstance(items, (str, bytes, Mapping)):
        return [i for i in items if isinstance(i, Mapping)]
    return []


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
