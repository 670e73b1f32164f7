"""Compile a WorkflowSpec into a LangGraph StateGraph.

Shape: every step S becomes two nodes. `S_run` runs one part (one task) and receives its Send; `S` joins the
parts under the step's join policy, evaluates the CEL edges and writes the routing decision into the state.
A conditional edge after `S` turns that decision into Sends: N of them for a fan-out (`parallel`/`forEach`),
one otherwise. Because routing is decided inside a node, it is checkpointed with the node's writes, so a
resumed run takes the same branch with the same task payloads.

The graph depends on the spec's graph alone (`GRAPH_FIELDS`: steps, edges, entry, workspace, maxStepRuns): a
run's input arrives in its state and its dispatcher (queue, workflow id, priority, budget, events) as
LangGraph's runtime context, so one compiled graph serves every run of a template, whatever its input
(compiling costs about 4 ms, more than a step: `graph_spec`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from langgraph.graph import END as LG_END
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from codeforge.api.outcome import Outcome
from codeforge.api.workflow import END, JoinPolicy, Step, WorkflowSpec
from codeforge.orchestrator import workspace as ws
from codeforge.orchestrator.conditions import ConditionError, edge_matches, for_each_items, select_input
from codeforge.orchestrator.dispatch import DispatchContext, PartRequest, StepDispatcher
from codeforge.orchestrator.events import EventKind, ProgressEvent
from codeforge.orchestrator.joins import Joined, join
from codeforge.orchestrator.state import RunState, parts_key, public_state

_R = TypeVar("_R")

BEGIN: Final = "_begin"  # step names cannot contain "_", so node names never collide
PUBLISH: Final = "_publish"  # spec.workspace: push the final commit to pushBranch when the run succeeded


#: The spec fields a compiled graph is built from; the compiler reads no other (`graph_spec`).
GRAPH_FIELDS: Final = frozenset({"entry", "steps", "edges", "workspace", "max_step_runs"})


def graph_spec(spec: WorkflowSpec) -> WorkflowSpec:
    """The spec as far as its graph goes: `GRAPH_FIELDS`, every other field at its default. Runs of one
    template differ in their input (and priority, budget, ...), not in their graph: compiling from this, and
    caching by it, gives them one compiled graph (keyed by the whole spec, with more live runs of their own
    input than the cache keeps, each start and each resume of a parked run compiled again)."""
    return WorkflowSpec.model_construct(**{name: getattr(spec, name) for name in GRAPH_FIELDS})


def graph_key(spec: WorkflowSpec) -> str:
    """What `graph_spec` keeps, as a cache key."""
    return spec.model_dump_json(include=set(GRAPH_FIELDS))


def run_node(step: str) -> str:
    return f"{step}_run"


def join_node(step: str) -> str:
    """The node that joins a step's parts and routes on: named after the step (rewind writes as it)."""
    return step


def entry_node(step: Step) -> str:
    """Where a step's visit starts: a fan-out's part node (one Send per part), else the step's own node,
    which runs its single part and joins it in the same superstep (half the supersteps and checkpoints)."""
    return run_node(step.name) if step.fans_out else join_node(step.name)


def counted(node: Callable[[Any, Runtime[StepDispatcher]], Awaitable[_R]]) -> Any:
    """A node that counts itself among the run's running nodes while it runs: the runner parks a run only
    when every running node waits on a task (`DispatchContext.parkable`)."""

    @functools.wraps(node)
    async def run(arg: Any, runtime: Runtime[StepDispatcher]) -> _R:
        with runtime.context.ctx.node():
            return await node(arg, runtime)

    return run


class GraphCompiler:
    """Builds the StateGraph of a spec; nodes find the run's StepDispatcher in `runtime.context`."""

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self._edge_index = {id(edge): i for i, edge in enumerate(spec.edges)}

    def build(self) -> StateGraph[RunState, StepDispatcher]:
        graph: StateGraph[RunState, StepDispatcher] = StateGraph(RunState, context_schema=StepDispatcher)
        # Nodes that route return a Command (update + goto); `destinations` only draws the graph.
        destinations = (*(entry_node(s) for s in self.spec.steps), LG_END)
        if self.spec.workspace is not None:
            graph.add_node(PUBLISH, counted(self._publish))
            graph.add_edge(PUBLISH, LG_END)
            destinations += (PUBLISH,)
        graph.add_node(BEGIN, counted(self._begin), destinations=destinations)
        # A run's input carries its first route when no task must run first (`first_route`): its entry
        # step then runs in the first superstep; else (spec.workspace, or a run checkpointed before) `_begin`
        # routes.
        graph.add_conditional_edges(START, self._start, [BEGIN, *destinations])
        for step in self.spec.steps:
            # a single-part step's part node serves runs checkpointed before it ran in the join's node
            graph.add_node(run_node(step.name), counted(self._part_node(step)))
            graph.add_node(join_node(step.name), counted(self._join_node(step)), destinations=destinations)
            graph.add_edge(run_node(step.name), join_node(step.name))
        return graph

    def routed(self, state: RunState | dict[str, Any], update: dict[str, Any]) -> Command[str]:
        """A routing node's update and where the run goes next, decided from it. A Command rather than a
        conditional edge: LangGraph reads an edge's input as a copy of every channel, about a third of a
        superstep's cost here."""
        after = {k: update[k] if k in update else state.get(k) for k in ("route", "error", "workspace")}
        return Command(update=update, goto=self.destinations(after))

    async def first_route(self, ctx: DispatchContext, state: RunState) -> dict[str, Any]:
        """What `_begin` would write, decided before the graph runs, for the run's input: the entry step's
        route. Empty with spec.workspace, whose ref `_begin` resolves first (a task). Saves a run a LangGraph
        superstep and a checkpoint."""
        if self.spec.workspace is not None:
            return {}
        return {"error": None} | await self._route_to(ctx, self.spec.entry_step, state, {})

    async def _start(self, state: RunState) -> list[Send] | str:
        # async: LangGraph runs a sync router in a thread pool (a hand-off and the GIL's switch interval
        # on every graph run: each run's start and each resume of a parked run)
        return self.destinations(dict(state)) if state.get("route") else BEGIN

    # -- nodes ---------------------------------------------------------------------------------------

    async def _begin(self, state: RunState, runtime: Runtime[StepDispatcher]) -> Command[str]:
        update: dict[str, Any] = {"started_at": state.get("started_at") or time.time(), "error": None}
        if self.spec.workspace is not None and not (state.get("workspace") or {}).get("base"):
            resolved = await self._resolve(runtime.context)
            if isinstance(resolved, str):
                return self.routed(state, update | self._fail(resolved))
            update["workspace"] = resolved
            state = {**state, "workspace": resolved}
        update |= await self._route_to(runtime.context.ctx, self.spec.entry_step, state, {})
        self.dispatch_early(runtime.context, update)
        return self.routed(state, update)

    async def _resolve(self, dispatcher: StepDispatcher) -> dict[str, Any] | str:
        """Resolve the workspace's ref to the run's base commit (checkpointed with the begin node, so a
        resumed or retried run keeps it); an error message when that fails."""
        assert self.spec.workspace is not None
        git, ctx = self.spec.workspace.git, dispatcher.ctx
        pool = self._first_pool()
        done = await dispatcher.run_system(
            pool,
            ws.resolve_task_id(ctx.workflow),
            "_resolve",
            ws.resolve_request(self.spec.workspace),
            ws.SYSTEM_TASK_ATTEMPTS,
        )
        info = ws.reported(done.get("result"))
        if done["status"] != Outcome.SUCCEEDED or info is None:
            why = (
                done.get("error") or f"the agent of pool {pool!r} reported no commit (no workspace support?)"
            )
            return f"spec.workspace.git: cannot resolve ref {git.ref!r} of {git.url}: {why}"
        ctx.emit(
            ProgressEvent(
                EventKind.WORKSPACE_RESOLVED,
                ctx.workflow,
                commit=info["commit"],
                detail={"url": git.url, "ref": git.ref, "commit": info["commit"]},
            )
        )
        return {"url": git.url, "ref": git.ref, "base": info["commit"], "head": info["commit"], "pool": pool}

    async def _publish(self, state: RunState, runtime: Runtime[StepDispatcher]) -> dict[str, Any]:
        """The run succeeded: push its final commit to pushBranch (force: a rerun replaces its branch)."""
        assert self.spec.workspace is not None
        current = dict(state.get("workspace") or {})
        if state.get("error") or not current.get("head") or current.get("published"):
            return {}
        ctx = runtime.context.ctx
        request = ws.publish_request(self.spec.workspace, current["base"], current["head"], ctx.name)
        done = await runtime.context.run_system(
            current.get("pool") or self._first_pool(),
            ws.publish_task_id(ctx.workflow),
            "_publish",
            request,
            ws.SYSTEM_TASK_ATTEMPTS,
        )
        branch = (request.push_ref or "").removeprefix("refs/heads/")
        info = ws.reported(done.get("result"))
        if done["status"] != Outcome.SUCCEEDED or info is None:
            why = done.get("error") or "the agent reported no commit"
            return {"error": f"publishing commit {current['head'][:12]} to branch {branch!r} failed: {why}"}
        published = {**current, "branch": branch, "published": True}
        for key in ("diffstat", "files"):
            if key in info:
                published[key] = info[key][: ws.STATUS_FILES_LIMIT] if key == "files" else info[key]
        if len(info.get("files") or []) > ws.STATUS_FILES_LIMIT:
            published["filesOmitted"] = len(info["files"]) - ws.STATUS_FILES_LIMIT
        ctx.emit(
            ProgressEvent(
                EventKind.WORKSPACE_PUBLISHED,
                ctx.workflow,
                commit=current["head"],
                detail={k: v for k, v in published.items() if k != "pool"},
            )
        )
        return {"workspace": published}

    def _first_pool(self) -> str:
        """The pool that runs the workspace's system tasks before any step has run: the entry step's, or
        (an approval step has none) the first task step's."""
        entry = self.spec.step(self.spec.entry_step)
        return entry.pool or self.spec.task_pools[0]

    def _part_node(self, step: Step) -> Any:
        async def run_part(arg: dict[str, Any], runtime: Runtime[StepDispatcher]) -> dict[str, Any]:
            key = parts_key(step.name, arg["visit"])
            if arg.get("empty"):
                return {"parts": {key: {}}}
            outcome = await self._run_part(step, arg, runtime.context)
            update: dict[str, Any] = {"parts": {key: {str(arg["index"]): outcome}}}
            if outcome.get("usage"):  # checkpointed with the part: a resumed run knows what was spent
                update["usage"] = {step.name: outcome["usage"]}
            return update

        run_part.__name__ = run_node(step.name)
        return run_part

    async def _run_part(self, step: Step, arg: dict[str, Any], dispatcher: StepDispatcher) -> dict[str, Any]:
        """Run one part (a task, or an approval's wait): its outcome record for the join."""
        if step.is_approval:
            since = float(arg.get("since") or time.time())
            return await dispatcher.run_approval(step, arg["visit"], since)
        return await dispatcher.run_part(self._request(step, arg, dispatcher.ctx.workflow))

    def _request(self, step: Step, arg: dict[str, Any], workflow: str) -> PartRequest:
        """A task part's request, from its argument (`_part_args`)."""
        checkout = None
        if self.spec.workspace is not None and arg.get("base"):
            checkout = ws.checkout_request(
                self.spec.workspace, arg["base"], workflow, step.name, arg["visit"], arg["index"]
            )
        first_success = step.fans_out and step.join is JoinPolicy.FIRST_SUCCESS
        return PartRequest(step, arg["visit"], arg["index"], arg["payload"], first_success, checkout)

    def dispatch_early(self, dispatcher: StepDispatcher, update: dict[str, Any]) -> None:
        """A routing node's update routes to a task step: enqueue its parts now, not once LangGraph has
        ended this superstep and started the step's nodes (`StepDispatcher.dispatch_early`)."""
        route = update.get("route")
        if not route or route["to"] == END:
            return
        step = self.spec.step(route["to"])
        if not step.is_approval:
            workflow = dispatcher.ctx.workflow
            dispatcher.dispatch_early([self._request(step, arg, workflow) for arg in _part_args(route)])

    def _join_node(self, step: Step) -> Any:
        async def join_step(state: RunState, runtime: Runtime[StepDispatcher]) -> Command[str]:
            route, dispatcher = state["route"], runtime.context
            key = parts_key(step.name, int(route["visit"]))
            parts = state.get("parts", {}).get(key)
            if parts is None and not step.fans_out:
                # A single part runs here, in its join's superstep: half the supersteps and checkpoints. A
                # crash before the join loses nothing: the node runs again and re-attaches to the task by
                # its id (dispatch.py). (Parts present: a run checkpointed before this ran its part node.)
                outcome = await self._run_part(step, _part_args(route)[0], dispatcher)
                update = await self._join(step, state, dispatcher, {"0": outcome})
                if outcome.get("usage"):
                    update["usage"] = {step.name: outcome["usage"]}
            else:
                update = await self._join(step, state, dispatcher, parts or {})
                update = {"parts": {key: None}} | update  # merged: drop them from the state
            self.dispatch_early(dispatcher, update)
            return self.routed(state, update)

        join_step.__name__ = join_node(step.name)
        return join_step

    async def _join(
        self, step: Step, state: RunState, dispatcher: StepDispatcher, parts: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Join a visit's parts, record it, and route on: the state update of the step's node."""
        ctx = dispatcher.ctx
        visit = int(state["route"]["visit"])
        joined = join(step, parts)
        current = state.get("workspace")
        info: dict[str, Any] | None = None
        if self.spec.workspace is not None and current and not step.is_approval:
            joined, info = await self._step_workspace(dispatcher, step, visit, parts, joined, current)
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
        if info is not None:
            record["workspace"] = ws.compact(info)
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
                commit=(info or {}).get("commit", ""),
                detail={"approval": joined.result} if step.is_approval else ws.compact(info),
            )
        )
        # An approval's decision is kept whichever way it went: later steps may read who decided.
        keep = joined.status == Outcome.SUCCEEDED or step.is_approval
        results = dict(state.get("results", {}))
        if keep:
            results[step.name] = joined.result
        update: dict[str, Any] = {"history": [record], "visits": {step.name: visit}}
        if keep:
            update["results"] = {step.name: joined.result}
        if info is not None and current:
            head = info["commit"] if joined.status == Outcome.SUCCEEDED else current["head"]
            update["workspace"] = {**current, "head": head, "pool": step.pool}
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
        if info is not None:
            variables["workspace"] = info
        try:
            target = await self._next(step, joined.status, variables)
        except ConditionError as exc:
            return update | self._fail(str(exc))
        if target is None:
            return update | self._fail(f"step {step.name!r} failed: {joined.error}")
        if target == END:
            return update | {"route": {"to": END}}
        visits = {**state.get("visits", {}), step.name: visit}
        later = {**state, "results": results, "visits": visits}
        if "workspace" in update:
            later["workspace"] = update["workspace"]
        return update | await self._route_to(ctx, target, later, variables)

    async def _step_workspace(
        self,
        dispatcher: StepDispatcher,
        step: Step,
        visit: int,
        parts: dict[str, dict[str, Any]],
        joined: Joined,
        current: dict[str, Any],
    ) -> tuple[Joined, dict[str, Any]]:
        """The step's output commit under its join: the single part's, firstSuccess/majority's winner's,
        `all`'s input commit or, with workspace.merge, the parts merged (the step fails on a conflict)."""
        base = current["head"]
        if joined.status != Outcome.SUCCEEDED:
            return joined, ws.unchanged(base)
        ordered = [parts[k] for k in sorted(parts, key=int)]
        silent = [
            p["index"]
            for p in ordered
            if p["status"] == Outcome.SUCCEEDED and ws.reported(p.get("result")) is None
        ]
        if silent:
            return Joined(
                Outcome.FAILED.value,
                None,
                f"step {step.name!r}: part {silent[0]} reported no workspace commit: the agents of pool "
                f"{step.pool!r} must support workspaces (codeforge-agent with git)",
            ), ws.unchanged(base)
        if step.fans_out and step.join is JoinPolicy.ALL:
            if not step.merges:
                return joined, ws.unchanged(base)
            commits = ws.changed_commits(ordered, base)
            if not commits:
                return joined, ws.unchanged(base)
            if len(commits) == 1:  # one part changed the tree: its commit descends from base already
                only = next(
                    p for p in ordered if (ws.reported(p.get("result")) or {}).get("commit") == commits[0]
                )
                return joined, dict(ws.reported(only.get("result")) or {})
            ctx, repo = dispatcher.ctx, self.spec.workspace
            assert repo is not None  # only called with spec.workspace
            done = await dispatcher.run_system(
                step.pool,
                ws.merge_task_id(ctx.workflow, step.name, visit),
                step.name,
                ws.merge_request(repo, base, commits, ctx.workflow, step.name, visit),
                ws.SYSTEM_TASK_ATTEMPTS,
            )
            merged = ws.reported(done.get("result"))
            if done["status"] != Outcome.SUCCEEDED or merged is None:
                why = done.get("error") or "the agent reported no merge commit"
                return Joined(
                    Outcome.FAILED.value, None, f"merging the parts of step {step.name!r} failed: {why}"
                ), ws.unchanged(base)
            return joined, dict(merged)
        index = ws.winner_index(step, ordered, joined)
        if index is None:
            return joined, ws.unchanged(base)
        info = dict(ws.reported(parts[str(index)].get("result")) or ws.unchanged(base))
        if step.fans_out and isinstance(joined.result, dict):
            joined = Joined(joined.status, {**joined.result, "workspace": info}, joined.error)
        return joined, info

    # -- routing -------------------------------------------------------------------------------------

    async def _next(self, step: Step, status: str, variables: dict[str, Any]) -> str | None:
        """The next step, END, or None when a failed step has no edge that routes its failure."""
        default: str | None = None
        for edge in self.spec.edges_from(step.name):
            if edge.when is None:
                default = edge.to
            elif await edge_matches(edge.when, variables, f"spec.edges[{self._edge_index[id(edge)]}].when"):
                return edge.to
        if status == Outcome.FAILED:
            return None
        return default or END

    async def _route_to(
        self, ctx: DispatchContext, target: str, state: RunState | dict[str, Any], variables: dict[str, Any]
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
            if step.is_approval:
                items = [None]
            elif step.for_each is not None:
                each = {**variables, "state": public}
                items = await for_each_items(step.for_each, each, f"{where}.forEach")
            else:
                items = [None] * (step.parallel or 1)
            payloads = [
                {} if step.is_approval else await self._payload(ctx, step, public, i, item, f"{where}.input")
                for i, item in enumerate(items)
            ]
        except ConditionError as exc:
            return self._fail(str(exc))
        ctx.emit(ProgressEvent(EventKind.STEP_STARTED, ctx.workflow, target, parts=len(payloads)))
        route: dict[str, Any] = {"to": target, "visit": visit, "payloads": payloads}
        if step.is_approval:
            route["since"] = time.time()  # the approval's timeout counts from here, across restarts
        else:  # dispatch latency: an approval dispatches no task
            now = time.monotonic()
            ctx.ready.update({f"{target}#{visit}/{i}": now for i in range(len(payloads))})
        head = (state.get("workspace") or {}).get("head")
        if head:
            route["base"] = head  # every part starts from the commit the previous step reported
        return {"route": route}

    async def _payload(
        self, ctx: DispatchContext, step: Step, public: dict[str, Any], index: int, item: Any, where: str
    ) -> Any:
        variables = {"state": public, "input": public["input"], "item": item, "index": index}
        payload: dict[str, Any] = dict(step.params)
        payload["input"] = await select_input(step.input, variables, where)
        if step.fans_out:
            payload["index"] = index
            payload["item"] = item
        payload["workflow"] = ctx.workflow
        payload["step"] = step.name
        return payload

    def _fail(self, message: str) -> dict[str, Any]:
        return {"route": {"to": END}, "error": message}

    def destinations(self, state: dict[str, Any]) -> list[Send] | str:
        """Where a state's `route` leads: the routed step's node, the Sends of its parts, publishing, or
        the end."""
        route = state.get("route") or {"to": END}
        if route["to"] == END:
            if self.spec.workspace is not None and not state.get("error") and state.get("workspace"):
                return PUBLISH
            return LG_END
        step = self.spec.step(route["to"])
        if not step.fans_out:
            return join_node(step.name)  # one part: the step's node reads its route from the state
        node = run_node(step.name)
        if not route["payloads"]:  # forEach over an empty list: one no-op part so the join still runs
            return [Send(node, {"visit": route["visit"], "empty": True})]
        return [Send(node, arg) for arg in _part_args(route)]


def _part_args(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The argument of each part of a routed visit: a fan-out part node's Send, a single part's run in its
    step's node, an early dispatch."""
    common = {k: route[k] for k in ("base", "since") if route.get(k)}
    return [
        {"visit": route["visit"], "index": i, "payload": p, **common} for i, p in enumerate(route["payloads"])
    ]
