"""Workflow specs compiled to LangGraph StateGraphs, steps dispatched as tasks, durable on a checkpointer."""

from codeforge.orchestrator.compiler import GraphCompiler
from codeforge.orchestrator.dispatch import task_id
from codeforge.orchestrator.events import EventKind, EventSink, ProgressEvent
from codeforge.orchestrator.rewind import RewindError
from codeforge.orchestrator.runner import WorkflowHandle, WorkflowOutcome, WorkflowRunner

__all__ = [
    "EventKind",
    "EventSink",
    "GraphCompiler",
    "ProgressEvent",
    "RewindError",
    "WorkflowHandle",
    "WorkflowOutcome",
    "WorkflowRunner",
    "task_id",
]
