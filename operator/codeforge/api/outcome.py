"""How a task part, a step or a whole Workflow run ended: one vocabulary for the queue, the orchestrator, the
controller and the embedded runner.

A StrEnum, so plain strings read back from checkpoints and Redis compare equal to its members. What goes into
graph state is `Outcome.X.value` (a plain str): LangGraph's serializer would otherwise store the enum's class
path in the checkpoint, which it warns about (and will refuse) when reading it back.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
