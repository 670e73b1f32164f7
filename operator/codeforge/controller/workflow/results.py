"""Where Workflow results too large for the status go (`codeforge.orchestrator.results`: one Redis string
beside the run's checkpoints, which `codeforge get` reads back), keyed by the Workflow's uid."""

from __future__ import annotations

from typing import Any

from codeforge.controller.kstatus import ObjectRef
from codeforge.orchestrator.results import ResultStore, result_key

JSON = dict[str, Any]

__all__ = ["ResultStore", "bounded_result", "result_key"]


async def bounded_result(
    store: ResultStore, ref: ObjectRef, results: dict[str, Any]
) -> tuple[Any, JSON | None]:
    """The result for the status: inline when small, else a reference to a Redis copy."""
    return await store.bounded(ref.uid, results)
