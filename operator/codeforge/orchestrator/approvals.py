"""Approval steps: a run waits for a decision made outside it, holding no agent and no queue slot.

The decisions arrive from whoever drives the run: the operator copies the Workflow's approval annotations in
(`codeforge.api.approval`) whenever they change; `codeforge run` takes them from its flags or a prompt. The
wait itself is part of a graph node, so it is durable the way every step is: after an operator restart the
node runs again, with the time it started waiting checkpointed in the route (the timeout does not restart),
and finds the decision in the annotation if one was made meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from codeforge.api.approval import Decision
from codeforge.orchestrator.flag import Flag

#: Called when a step starts waiting (step, visit, message): `codeforge run` prompts from there.
OnWaiting = Callable[[str, int, str], None]


class ApprovalBox:
    """The decisions known for one run's approval steps, and the waits on them."""

    def __init__(
        self, decisions: Mapping[str, Decision] | None = None, on_waiting: OnWaiting | None = None
    ) -> None:
        self._decisions: dict[str, Decision] = dict(decisions or {})
        self._changed = Flag()
        self.on_waiting = on_waiting
        #: step -> visit of every step waiting now (the CLI's prompt and tests read it)
        self.waiting: dict[str, int] = {}

    def decide(self, step: str, decision: Decision) -> None:
        self._decisions[step] = decision
        self._wake()

    def replace(self, decisions: Mapping[str, Decision]) -> None:
        """All decisions at once (the operator: the annotations as they are now)."""
        if dict(decisions) != self._decisions:
            self._decisions = dict(decisions)
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = Flag()

    def get(self, step: str, visit: int) -> Decision | None:
        decision = self._decisions.get(step)
        return decision if decision is not None and decision.applies_to(visit) else None

    async def wait(self, step: str, visit: int, message: str, deadline: float | None) -> Decision | None:
        """The decision on this visit of the step; None when `deadline` (Unix time) passed first."""
        self.waiting[step] = visit
        try:
            if (found := self.get(step, visit)) is None and self.on_waiting is not None:
                self.on_waiting(step, visit, message)
            while (found := self.get(step, visit)) is None:
                changed = self._changed
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    return None
                try:
                    await asyncio.wait_for(changed.wait(), left)
                except TimeoutError:
                    return None
            return found
        finally:
            self.waiting.pop(step, None)
