"""Ending a run early: `spec.shutdown` (`codeforge stop | terminate`), as Argo's `argo stop | terminate`.

- Stop: nothing new is dispatched (the gate `spec.suspend` uses is closed); the tasks already running finish
  and their results are kept; the run ends as soon as every task has ended and something waits at the gate
  (a next step, a retry, an approval). A run that needs nothing more ends with its own outcome. Its tasks no
  agent has claimed yet (queued, or waiting out a retry backoff) are withdrawn from the queue
  (`TaskQueue.cancel(..., only_if_queued=True)`, atomic with claims) and their parts wait at the gate like
  undispatched ones: their steps end Cancelled, as under Terminate, and are not in the run's history.
- Terminate: the run is cancelled at once and its outstanding tasks are cancelled in the queue.

Either way a stopped run ends Cancelled with the reason `Stopped` or `Terminated`. The request lives in the
Workflow's spec, so a run resumed after an operator restart reads it again; a resumed run under Stop still
re-attaches the tasks it had dispatched and waits for those an agent runs (it withdraws the others).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from codeforge.api.task import TaskOutcome, TaskState
from codeforge.orchestrator.flag import Flag

#: `WorkflowOutcome.reason` (and the Workflow's Finished condition reason) of a stopped run.
STOPPED: Final = "Stopped"
TERMINATED: Final = "Terminated"
STOP_MESSAGE: Final = "stopped (spec.shutdown: Stop): the running tasks finished, nothing new was dispatched"
TERMINATE_MESSAGE: Final = "terminated (spec.shutdown: Terminate): the running tasks were cancelled"
#: The cancel reason of a task Stop withdrew before an agent claimed it (the queue keeps it as its error).
WITHDRAWN_MESSAGE: Final = "withdrawn (spec.shutdown: Stop): no agent had started it"


def withdrawn(outcome: TaskOutcome) -> bool:
    """The task was withdrawn by Stop (in this process or before a restart): it never ran."""
    return outcome.state is TaskState.CANCELLED and outcome.error == WITHDRAWN_MESSAGE


@dataclass
class StopGate:
    """Where a run under Stop tells the runner it has nothing left running: the dispatches held at the gate
    (and approval waits) are counted, and every change wakes the runner, which compares with the tasks
    still outstanding."""

    requested: bool = False
    held: int = 0
    changed: Flag = field(default_factory=Flag)
    #: task ids the runner asked the queue to withdraw (once each: a claimed task stays claimed)
    tried: set[str] = field(default_factory=set)

    def request(self) -> None:
        self.requested = True
        self.changed.set()

    def poke(self) -> None:
        """A task ended (or anything else the runner should look again for)."""
        if self.requested:
            self.changed.set()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Around a wait that dispatches nothing (closed gate, approval): the run may end meanwhile."""
        self.held += 1
        self.poke()
        try:
            yield
        finally:
            self.held -= 1

    def settled(self, outstanding: Mapping[str, str]) -> bool:
        """Stop asked, no task of the run outstanding, and the run waits for something it may not start."""
        return self.requested and self.held > 0 and not outstanding
