"""The operator's event-loop lag: how late a timer fires on its loop.

Every Workflow run, watch event, status write and reconcile shares the operator's one event loop, so what a
timer waits past its due time is what any ready step waits before its own work starts: the part of
dispatch latency no code path of its own explains (bench/README.md, issue 15 point 2). Seen in
`codeforge_operator_event_loop_lag_seconds`: a p99 near a second says the operator needs a CPU to itself, or
fewer runs busy at once (CODEFORGE_WORKFLOW_BUSY_RUNS: each busy run's ready work shares a turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

#: A timer every half second: 2 wake-ups a second, nothing next to a loop that runs Workflows, and still
#: a sample in each of Prometheus' scrapes.
INTERVAL_SECONDS: Final = 0.5


async def watch_loop_lag(observe: Callable[[float], None], interval: float = INTERVAL_SECONDS) -> None:
    """Observe each timer's delay past its due time, in seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(loop.time() - due, 0.0))
