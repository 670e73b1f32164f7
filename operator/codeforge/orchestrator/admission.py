"""How many runs of one runner may be busy at once: started or resumed, and not yet waiting on their tasks.

Under more load than one event loop can serve (10,000 Workflows whose agents end 1,000 steps a second), every
run woken at once would go on at once, and each step's few Redis round trips would each wait behind all the
others': every step slow, instead of most of them quick and the rest waiting their turn. A run takes a turn
before its graph starts or resumes from a checkpoint, and gives it back as soon as it has enqueued a task
(a fan-out's parts are enqueued together), every running node waits on a task (re-attached after a resume),
a node waits on what no task ends (an approval, a suspension, its budget), its graph ends, or after
`HOLD_SECONDS` at most (whatever else it waits on must not keep others out). Turns are given in the order
asked for. Steps that go on inside a graph that did not park are not held back.

The price: a run's wait for its turn (`codeforge_workflow_admission_wait_seconds`) comes before the step's
dispatch latency is counted, and the turns keep fewer runs busy than an unlimited loop would (at 10,000
Workflows every run ended 81-88 s after the start instead of 73 s, with peak memory 0.77-0.81 GiB instead
of 1.4 GiB and later steps' dispatch p99 1.2-1.7 s instead of 9 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

#: The operator's runs busy at once (CODEFORGE_WORKFLOW_BUSY_RUNS). Every busy run's ready work shares one
#: loop turn, so this bounds how long a turn is: 32 against 128 (bench/README.md, "s11") cut dispatch p50
#: 2-4x and p99 2-6x while running, at 1,000 and 10,000, with the same throughput and memory; 512 was as
#: no limit ("s7"). A runner made without an `Admission` has no limit (`codeforge run`: a burst of short
#: fan-outs in one process lost a third of its throughput to the turns).
DEFAULT_LIMIT: Final = 32
#: The longest a run keeps its turn.
HOLD_SECONDS: Final = 1.0

Leave = Callable[[], None]


class Admission:
    """Turns for runs to start or resume (see the module's docstring); `limit` None: no limit."""

    def __init__(
        self,
        limit: int | None = DEFAULT_LIMIT,
        hold_seconds: float = HOLD_SECONDS,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.limit = limit
        self.hold_seconds = hold_seconds
        #: called with each turn's wait in seconds (0 for a turn had at once): the operator's histogram
        self.observe = observe
        #: turns held now
        self.busy = 0
        # asyncio's semaphore queues in order and passes a turn handed to a cancelled waiter on
        self._turns = asyncio.Semaphore(limit) if limit is not None else None

    async def enter(self) -> Leave:
        """Wait for a turn; returns the call that gives it back (once; later calls do nothing)."""
        turns = self._turns
        if turns is None:
            return _nothing
        loop = asyncio.get_running_loop()
        asked = loop.time()
        await turns.acquire()
        self.busy += 1
        if self.observe is not None:
            self.observe(loop.time() - asked)
        left = False
        timer: asyncio.TimerHandle | None = None

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                if timer is not None:
                    timer.cancel()
                self.busy -= 1
                turns.release()

        timer = loop.call_later(self.hold_seconds, leave)
        return leave


def _nothing() -> None:
    return None
