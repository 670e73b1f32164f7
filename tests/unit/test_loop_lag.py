"""The operator's event-loop lag probe: a loop kept busy shows as a late timer, a quiet one does not."""

from __future__ import annotations

import asyncio
import contextlib
import time

from codeforge.controller.loop_lag import watch_loop_lag


async def test_a_blocked_loop_shows_as_a_late_timer() -> None:
    lags: list[float] = []
    probe = asyncio.create_task(watch_loop_lag(lags.append, interval=0.05))
    try:
        await asyncio.sleep(0.12)  # a couple of quiet timers first
        quiet = len(lags)
        time.sleep(0.3)  # noqa: ASYNC251 (the point: it blocks the loop, the timer due fires ~0.25 s late)
        await asyncio.sleep(0.12)
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    assert quiet >= 1
    assert all(lag >= 0 for lag in lags)
    assert min(lags[:quiet]) < 0.2  # loose: a busy machine delays a quiet loop too
    assert max(lags[quiet:]) >= 0.2
