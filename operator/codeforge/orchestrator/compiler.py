"""Compile a WorkflowSpec into a LangGraph StateGraph.

Shape: every step S becomes two nodes. `S_run` runs one part (one task) and receives its Send; `S` joins the
parts under the step's join policy, evaluates the CEL edges and writes the routing decision into the state.
A conditional edge after `S` turns that decision into Sends: N of them for a fan-out (`parallel`/`forEach`),
one otherwise. Because routing is decided inside a node, it is checkpointed with the node's writes, so a
resumed run takes the same branch with the same task payloads.

The graph depends on the spec alone: a run's dispatcher (queue, workflow id, events) arrives as LangGraph's
runtime context, so one compiled graph serves every run of a spec (compiling costs more than a step).
"""

from __future__ import annotations

import time
from typing import Any, Final

from langgraph.graph import END as LG_END
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from codeforge.api.workflow import END, JoinPolicy, Step, WorkflowSpec
from codeforge.orchestrator.conditions import ConditionError, edge_matches, for_each_items, select_input
from codeforge.orchestrator.dispatch import PartRequest, RunContext, StepDispatcher
from codeforge.orchestrator.events import EventKind, ProgressEvent
from codeforge.orchestrator.joins import FAILED, SUCCEEDED, join
from codeforge.orchestrator.state import RunState, parts_key, public_state

BEGIN: Final = "_begin"  # step names cannot contain "_", so node names never collide


def run_node(step: str) -> str:
    return f"{step}_run"


class GraphCompiler:
    """Builds the StateGraph of a spec; nodes find the run's StepDispatcher in `runtime.context`."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self._edge_index = {id(edge): i for i, edge in enumerate(spec.edges)}

    def build(self) -> StateGraph[RunState, StepDispatcher]:
        graph: StateGraph[RunState, StepDispatcher] = StateGraph(RunState, context_schema=StepDispatcher)
        graph.add_node(BEGIN, self._begin)
        graph.add_edge(START, BEGIN)
        destinations = [run_node(s.name) for s in self.spec.steps] + [LG_END]
        graph.add_conditional_edges(BEGIN, self._fan_out, destinations)
        for step in self.spec.steps:
            graph.add_node(run_node(step.name), self._part_node(step))
            graph.add_node(step.name, self._join_node(step))
            graph.add_edge(run_node(step.name), step.name)
            graph.add_conditional_edges(step.name, self._fan_out, destinations)
        return graph

    # -- nodes ---------------------------------------------------------------------------------------

    async def _begin(self, state: RunState, runtime: Runtime[StepDispatcher]) -> dict[str, Any]:
        update: dict[str, Any] = {"started_at": state.get("started_at") or time.time(), "error": None}
        return update | self._route_to(runtime.context.ctx, self.spec.entry_step, state, {})

    def _part_node(self, step: Step) -> Any:
        first_success = step.fans_out and step.join is JoinPolicy.FIRST_SUCCESS

        async def run_part(arg: dict[str, Any], runtime: Runtime[StepDispatcher]) -> dict[str, Any]:
            key = parts_key(step.name, arg["visit"])
            if arg.get("empty"):
                return {"parts": {key: {}}}
            outcome = await runtime.context.run_part(
                PartRequest(step, arg["visit"], arg["index"], arg["payload"], first_success)
            )
            return {"parts": {key: {str(arg["index"]): outcome}}}

        run_part.__name__ = run_node(step.name)
        return run_part

    def _join_node(self, step: Step) -> Any:
        async def join_step(state: RunState, runtime: Runtime[StepDispatcher]) -> dict[str, Any]:
            ctx = runtime.context.ctx
            visit = int(state["route"]["visit"])
            parts = state.get("parts", {}).get(parts_key(step.name, visit), {})
            joined = join(step, parts)
            started = min((p.get("started", time.time()) for p in parts.values()), default=time.time())
            attempts = max((p.get("attempts", 0) for p in parts.values()), default=0)
            agents = ", ".join(sorted({p["agent"] for p in parts.values() if p.get("agent")}))
            duration = time.time() - started
            record = {
                "step": step.name,
                "visit": visit,
                "status": joined.status,
                "error": joined.error,
                "attempts": attempts,
                "parts": len(parts),
                "duration": round(duration, 6),
            }
            ctx.emit(
                ProgressEvent(
                    EventKind.STEP_FINISHED,
                    ctx.workflow,
                    step.name,
                    attempt=attempts,
                    status=joined.status,
                    message=joined.error or "",
                    duration=duration,
                    parts=len(parts),
                    agent=agents,
                )
            )
            results = dict(state.get("results", {}))
            if joined.status == SUCCEEDED:
                results[step.name] = joined.result
            update: dict[str, Any] = {
                "history": [record],
                "visits": {step.name: visit},
                "parts": {parts_key(step.name, visit): None},  # merged now: drop them from the state
            }
            if joined.status == SUCCEEDED:
                update["results"] = {step.name: joined.result}
            variables = {
                "state": {"input": state.get("input"), "results": results},
                "input": state.get("input"),
                "result": joined.result,
                "step": {
                    "name": step.name,
                    "status": joined.status,
                    "error": joined.error or "",
                    "attempts": attempts,
                },
            }
            try:
                target = self._next(step, joined.status, variables)
            except ConditionError as exc:
                return update | self._fail(str(exc))
            if target is None:
                return update | self._fail(f"step {step.name!r} failed: {joined.error}")
            if target == END:
                return update | {"route": {"to": END}}
            visits = {**state.get("visits", {}), step.name: visit}
            return update | self._route_to(
                ctx, target, {**state, "results": results, "visits": visits}, variables
            )

        join_step.__name__ = step.name
        return join_step

    # -- routing -------------------------------------------------------------------------------------

    def _next(self, step: Step, status: str, variables: dict[str, Any]) -> str | None:
        """The next step, END, or None when a failed step has no edge that routes its failure."""
        default: str | None = None
        for edge in self.spec.edges_from(step.name):
            if edge.when is None:
                default = edge.to
            elif edge_matches(edge.when, variables, f"spec.edges[{self._edge_index[id(edge)]}].when"):
                return edge.to
        if status == FAILED:
            return None
        return default or END

    def _route_to(
        self, ctx: RunContext, target: str, state: RunState | dict[str, Any], variables: dict[str, Any]
    ) -> dict[str, Any]:
        """Decide the target's visit and its parts' payloads, evaluated now and checkpointed with the node."""
        step = self.spec.step(target)
        visits = state.get("visits", {})
        if sum(visits.values()) >= self.spec.max_step_runs:
            return self._fail(
                f"the workflow ran {self.spec.max_step_runs} steps (spec.maxStepRuns) without finishing: "
                "check the loop's `when` conditions or raise maxStepRuns"
            )
        visit = int(visits.get(target, 0)) + 1
        public = public_state(state)  # type: ignore[arg-type]
        where = f"spec.steps[{self.spec.steps.index(step)}]"
        try:
            if step.for_each is not None:
                items = for_each_items(step.for_each, {**variables, "state": public}, f"{where}.forEach")
            else:
                items = [None] * (step.parallel or 1)
            payloads = [
                self._payload(ctx, step, public, i, item, f"{where}.input") for i, item in enumerate(items)
            ]
        except ConditionError as exc:
            return self._fail(str(exc))
        ctx.emit(ProgressEvent(EventKind.STEP_STARTED, ctx.workflow, target, parts=len(payloads)))
        return {"route": {"to": target, "visit": visit, "payloads": payloads}}

    def _payload(
        self, ctx: RunContext, step: Step, public: dict[str, Any], index: int, item: Any, where: str
    ) -> Any:
        variables = {"state": public, "input": public["input"], "item": item, "index": index}
        payload: dict[str, Any] = dict(step.params)
        payload["input"] = select_input(step.input, variables, where)
        if step.fans_out:
            payload["index"] = index
            payload["item"] = item
        payload["workflow"] = ctx.workflow
        payload["step"] = step.name
        return payload

    def _fail(self, message: str) -> dict[str, Any]:
        return {"route": {"to": END}, "error": message}

    @staticmethod
    async def _fan_out(state: RunState) -> list[Send] | str:
        # async on purpose: LangGraph runs a sync router in a thread pool, a hop that costs ~1 ms per step
        route = state.get("route") or {"to": END}
        if route["to"] == END:
            return LG_END
        node = run_node(route["to"])
        payloads = route["payloads"]
        if not payloads:  # forEach over an empty list: one no-op part so the join still runs
            return [Send(node, {"visit": route["visit"], "empty": True})]
        return [
            Send(node, {"visit": route["visit"], "index": i, "payload": p}) for i, p in enumerate(payloads)
        ]
