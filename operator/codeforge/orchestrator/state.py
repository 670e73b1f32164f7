"""The LangGraph state of a workflow run, and the reducers that merge what parallel nodes write."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from codeforge.orchestrator.budget import add_usage


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Later writes win per key (results of a step revisited in a loop replace the earlier ones)."""
    return {**(left or {}), **(right or {})}


def merge_parts(
    left: dict[str, dict[str, Any]] | None, right: dict[str, dict[str, Any] | None] | None
) -> dict[str, dict[str, Any]]:
    """Fan-in: parts of one step visit ("step#visit") arrive from parallel Send tasks; keep all of them.
    The join writes None for its visit once the parts are merged into `results`, so they do not pile up."""
    merged = dict(left or {})
    for key, parts in (right or {}).items():
        if parts is None:
            merged.pop(key, None)
        else:
            merged[key] = {**merged.get(key, {}), **parts}
    return merged


class RunState(TypedDict, total=False):
    input: Any  # the workflow's spec.input
    results: Annotated[dict[str, Any], merge_dicts]  # step name -> joined result of its latest visit
    parts: Annotated[dict[str, dict[str, Any]], merge_parts]  # "step#visit" -> {index: part outcome}
    visits: Annotated[dict[str, int], merge_dicts]  # step name -> visits so far
    history: Annotated[list[dict[str, Any]], operator.add]  # one record per finished step visit
    route: dict[str, Any]  # the join's routing decision: {"to": step or END, "visit": n}
    error: str | None  # set when the workflow failed
    started_at: float  # Unix time the run began; the workflow timeout counts from it across restarts
    #: spec.workspace runs: {url, ref, base (the resolved start commit), head (the commit the next step starts
    #: from), pool (the last step's), and once published: branch, diffstat, files}
    workspace: dict[str, Any]
    #: step name -> {tokensIn, tokensOut, cost} its tasks reported, summed (orchestrator.budget)
    usage: Annotated[dict[str, dict[str, Any]], add_usage]


def public_state(state: RunState) -> dict[str, Any]:
    """What CEL sees as `state` and a task receives by default."""
    public = {"input": state.get("input"), "results": state.get("results", {})}
    workspace = state.get("workspace")
    if workspace:
        public["workspace"] = {k: workspace.get(k) for k in ("url", "ref", "base", "head")}
    return public


def parts_key(step: str, visit: int) -> str:
    return f"{step}#{visit}"
