"""The Temporal side of `codeforge bench workflow`: its two workflows, the no-op activity and the worker
process (`python -m codeforge.benchmarks.peers.temporal_workflows ADDRESS TASK_QUEUE`).

This module imports nothing but temporalio and the standard library: Temporal's workflow sandbox re-imports
it for every workflow run, so it is kept as light as a Temporal user's workflow module.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

STEP_TIMEOUT = timedelta(seconds=60)


@activity.defn(name="step")
async def step(value: Any) -> Any:
    return value


@workflow.defn(name="Chain")
class Chain:
    @workflow.run
    async def run(self) -> Any:
        value: Any = {"n": 1}
        for _ in range(3):
            value = await workflow.execute_activity(step, value, start_to_close_timeout=STEP_TIMEOUT)
        return value


@workflow.defn(name="FanOut")
class FanOut:
    @workflow.run
    async def run(self) -> Any:
        one = {"n": 1}
        fan = [workflow.execute_activity(step, one, start_to_close_timeout=STEP_TIMEOUT) for _ in range(3)]
        parts = await asyncio.gather(*fan)
        return await workflow.execute_activity(step, list(parts), start_to_close_timeout=STEP_TIMEOUT)


async def serve(address: str, task_queue: str) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    worker = Worker(client, task_queue=task_queue, workflows=[Chain, FanOut], activities=[step])
    await worker.run()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
