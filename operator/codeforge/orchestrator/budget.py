"""What a run's tasks used (tokens, cost) per step and in total, and its `spec.budget`.

Usage comes from task results (`codeforge.api.usage`). Each part node writes what its task used to the
checkpointed `usage` channel (summed per step, so a resumed run starts from what it had), and the ledger
keeps the same sums in memory as results arrive, because the budget must stop dispatching at once, not at
the end of the superstep. The first result that brings the total to the budget names the step that crossed
it; from then on nothing new is dispatched and the runner fails or suspends the Workflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from codeforge.api.usage import Budget, BudgetAction, Usage
from codeforge.orchestrator.flag import Flag

#: The Workflow condition reason (and WorkflowOutcome.reason) when the budget ends or suspends a run.
BUDGET_EXCEEDED: Final = "BudgetExceeded"


def add_usage(
    left: dict[str, dict[str, Any]] | None, right: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The `usage` channel's reducer: step name -> its tasks' usage, summed."""
    merged = dict(left or {})
    for step, value in (right or {}).items():
        merged[step] = (usage_of(merged.get(step)) + usage_of(value)).to_status()
    return merged


def usage_of(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    try:
        return Usage.model_validate(value)
    except ValueError:
        return Usage()


@dataclass
class Crossing:
    step: str
    total: Usage
    action: BudgetAction
    message: str


@dataclass
class Ledger:
    budget: Budget | None = None
    steps: dict[str, Usage] = field(default_factory=dict)
    total: Usage = field(default_factory=Usage)
    crossed: Crossing | None = None
    #: Set when the budget is crossed or raised again; the runner waits on it beside the graph.
    changed: Flag = field(default_factory=Flag)
    #: Set when a dispatch waits because the budget is crossed: the run needs more than it may spend.
    blocked: Flag = field(default_factory=Flag)

    @classmethod
    def restore(cls, budget: Budget | None, saved: dict[str, Any] | None) -> Ledger:
        ledger = cls(budget)
        for step, value in (saved or {}).items():
            ledger.steps[step] = usage_of(value)
            ledger.total = ledger.total + ledger.steps[step]
        if budget is not None and budget.reached(ledger.total):
            # Resumed past its budget: which step crossed it was in the status, not in the checkpoint.
            ledger._cross("(before the restart)")
        return ledger

    def rebudget(self, budget: Budget | None) -> None:
        """spec.budget changed: a raised budget lifts a crossing, a lowered one may make one."""
        self.budget = budget
        if self.crossed is not None and (budget is None or not budget.reached(self.total)):
            self.crossed = None
            self.blocked.clear()
            self.changed.set()
        elif self.crossed is None and budget is not None and budget.reached(self.total):
            self._cross("(spec.budget lowered)")

    def charge(self, step: str, usage: Usage) -> None:
        self.steps[step] = self.steps.get(step, Usage()) + usage
        self.total = self.total + usage
        if self.crossed is None and self.budget is not None and self.budget.reached(self.total):
            self._cross(step)

    def _cross(self, step: str) -> None:
        assert self.budget is not None
        self.crossed = Crossing(
            step,
            self.total,
            self.budget.on_exceed,
            f"budget exceeded at step {step!r}: {self.budget.describe(self.total)} (spec.budget)",
        )
        self.changed.set()

    def to_status(self) -> dict[str, Any]:
        return {
            "total": self.total.to_status(),
            "steps": {name: usage.to_status() for name, usage in sorted(self.steps.items())},
        }
