"""A minimal queue consumer run as a real subprocess by the crash tests (`python consumer.py URL POOL NAME`).

It claims one task, reports each step as one JSON line on stdout (so the test knows when to kill it),
"works" for `--work` seconds while heartbeating its lease, then completes the task with a result naming
itself. A refused heartbeat or complete (the lease was lost) is reported and ends the work: that is what
a real agent must do, and it is how the tests see that a zombie consumer recorded nothing.

Exit codes: 0 completed, 2 nothing to claim, 3 lease lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from codeforge.queue import Lease, LeaseLostError, TaskQueue, open_queue


def report(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def keep_alive(queue: TaskQueue, lease: Lease, interval: float) -> Lease:
    """Heartbeat until cancelled; returns only by raising LeaseLostError when the lease is gone."""
    while True:
        await asyncio.sleep(interval)
        lease = await queue.heartbeat(lease)


async def run(url: str, pool: str, name: str, work: float, heartbeat: float, claim_timeout: float) -> int:
    queue = await open_queue(url)
    try:
        lease = await queue.claim(pool, name, timeout=claim_timeout)
        if lease is None:
            report("idle")
            return 2
        report("claimed", id=lease.id, fence=lease.fence, attempts=lease.task.attempts)
        beats = asyncio.create_task(keep_alive(queue, lease, heartbeat))
        done, _ = await asyncio.wait({beats}, timeout=work)  # the "work": ends early only if beats fail
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseLostError):
            await beats
        if done:
            report("lease-lost", id=lease.id, stage="heartbeat")
            return 3
        try:
            await queue.complete(lease, {"by": name, "attempt": lease.task.attempts})
        except LeaseLostError as exc:
            report("lease-lost", id=lease.id, stage="complete", error=str(exc))
            return 3
        report("completed", id=lease.id)
        return 0
    finally:
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("pool")
    parser.add_argument("name")
    parser.add_argument("--work", type=float, default=0.0, help="seconds of simulated work")
    parser.add_argument("--heartbeat", type=float, default=0.2, help="seconds between heartbeats")
    parser.add_argument("--claim-timeout", type=float, default=30.0)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.url, args.pool, args.name, args.work, args.heartbeat, args.claim_timeout)))


if __name__ == "__main__":
    main()
