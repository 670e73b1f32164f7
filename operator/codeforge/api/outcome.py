"""How a task part, a step or a whole Workflow run ended: one vocabulary for the queue, the orchestrator, the
controller and the embedded runner.

A StrEnum, so the values stored in checkpoints and Redis (plain strings) compare equal to its members, and
old checkpoints keep working.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
