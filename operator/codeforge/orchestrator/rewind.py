"""Rewind a failed run to just before the step that failed, on the same thread (a retry).

The checkpointed state keeps every result of the steps that succeeded; the rewound step gets a new visit
(visit + 1), so its task ids are new and the queue, idempotent on task ids, runs it again instead of handing
back the old failure; then the graph continues as usual. The rewind is one `aupdate_state` as the step's join
node, with the routing decision that node would have written (a Command: its update and where it leads): a new
checkpoint on top of the old ones, so the history of the failed attempt stays readable.

Two ways a run fails, two places the step is found:
- a step failed with no edge routing its failure: the graph finished; the step is the last failed record in
  `history`, and the payloads of that visit come from the checkpoint that routed to it;
- the workflow's `timeoutSeconds` ran out: the runner stopped the graph mid-step and cancelled its tasks; the
  step and its payloads are the latest `route`.

The deadline restarts: `started_at` becomes now, so a run that failed on its timeout gets its full time again.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from codeforge.api.outcome import Outcome
from codeforge.api.workflow import END
from codeforge.orchestrator.compiler import PUBLISH, GraphCompiler, join_node
from codeforge.orchestrator.dispatch import StepDispatcher
from codeforge.orchestrator.state import RunState, parts_key


class RewindError(Exception):
    """The failed run cannot be rewound (the message says why)."""


async def rewind(
    graph: CompiledStateGraph[RunState, StepDispatcher], compiler: GraphCompiler, thread_id: str
) -> str | None:
    """Prepare the thread so that the next run re-runs the failed (or timed-out) step; returns its name.

    None when there is nothing to rewind: the run never started, so the next run starts it from the beginning.
    """
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    snapshot = await graph.aget_state(config)
    values: dict[str, Any] = dict(snapshot.values or {})
    if not values:
        return None
    if snapshot.next:
        route = _interrupted(values, snapshot.next)
    else:
        route = await _failed(graph, config, values)
    step, visit = str(route["to"]), int(route["visit"])
    update: dict[str, Any] = {
        "error": None,
        "started_at": time.time(),
        "parts": {parts_key(step, visit): None},  # a timed-out visit may have left parts behind
        # spec.workspace: "base" is the commit the failed visit was given; the new visit starts from it too
        "route": {k: route[k] for k in ("to", "payloads", "base") if k in route} | {"visit": visit + 1},
    }
    await graph.aupdate_state(config, compiler.routed(values, update), as_node=join_node(step))
    return step


def _interrupted(values: dict[str, Any], pending: tuple[str, ...]) -> dict[str, Any]:
    """The route of a run stopped mid-step (its timeout ran out; its tasks were cancelled)."""
    route = values.get("route") or {}
    if route.get("to") in (None, END) or "payloads" not in route:
        where = "while publishing its final commit" if PUBLISH in pending else "before its first step"
        raise RewindError(
            f"the run timed out {where}: there is no step to retry from; re-create the Workflow to rerun it"
        )
    return dict(route)


async def _failed(
    graph: CompiledStateGraph[RunState, StepDispatcher], config: RunnableConfig, values: dict[str, Any]
) -> dict[str, Any]:
    """The route that sent the run to its failed step, read back from the checkpoint history."""
    history = values.get("history") or []
    failed = next((r for r in reversed(history) if r.get("status") == Outcome.FAILED), None)
    if failed is None:
        raise RewindError(f"nothing to retry: no step failed ({values.get('error') or 'the run succeeded'})")
    step, visit = str(failed["step"]), int(failed["visit"])
    async for earlier in graph.aget_state_history(config):
        route = (earlier.values or {}).get("route") or {}
        if route.get("to") == step and route.get("visit") == visit and "payloads" in route:
            return dict(route)
    raise RewindError(f"the checkpoint history of step {step!r} is gone: cannot retry it")
