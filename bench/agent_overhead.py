"""The agent's own overhead per task with the `echo` handler, against a private local redis-server.

Two figures per task, from the agent's TaskTiming callback:
- claim -> handler start: from the claim returning to the handler being called (scheduling, metrics, logs);
- handler end -> result recorded: from the handler returning to `complete` being acknowledged by the queue.
The tasks are queued before the agent starts, so queue waiting is not part of either figure.

    .venv/bin/python bench/agent_overhead.py [--tasks 5000] [--concurrency 1 4] [--backend redis memory]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass

from codeforge.api.task import Task
from codeforge.benchmarks.stats import percentile
from codeforge.queue import open_queue
from codeforge.testing.redis_server import LocalRedis
from codeforge_agent import Agent, AgentConfig, HandlerConfig, TaskTiming

POOL = "bench-overhead"


@dataclass
class Result:
    backend: str
    concurrency: int
    tasks: int
    seconds: float
    to_start: list[float]
    to_record: list[float]


async def measure(url: str, backend: str, tasks: int, concurrency: int) -> Result:
    queue = await open_queue(url)
    timings: list[TaskTiming] = []
    done = asyncio.Event()

    def record(timing: TaskTiming) -> None:
        timings.append(timing)
        if len(timings) == tasks:
            done.set()

    pool = f"{POOL}-{backend}-{concurrency}-{time.monotonic_ns()}"
    await queue.enqueue_many([Task(id=f"t{i}", pool=pool, payload={"i": i}) for i in range(tasks)])
    config = AgentConfig(
        pool=pool, queue_url=url, concurrency=concurrency, handler=HandlerConfig(kind="echo")
    )
    stop = asyncio.Event()
    agent = Agent(queue, config, on_task_done=record)
    started = time.perf_counter()
    runner = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    stop.set()
    await runner
    await queue.close()
    assert all(t.outcome == "succeeded" for t in timings), "every echo task must succeed"
    return Result(
        backend,
        concurrency,
        tasks,
        elapsed,
        [(t.started - t.claimed) * 1e6 for t in timings],
        [(t.recorded - t.finished) * 1e6 for t in timings],
    )


def table(results: list[Result]) -> str:
    rows = [
        "| backend | concurrency | tasks/s | claim -> handler start p50 / p99 (µs) "
        "| handler end -> recorded p50 / p99 (µs) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        to_start, to_record = sorted(r.to_start), sorted(r.to_record)
        rows.append(
            f"| {r.backend} | {r.concurrency} | {r.tasks / r.seconds:,.0f} "
            f"| {percentile(to_start, 50):.0f} / {percentile(to_start, 99):.0f} "
            f"| {percentile(to_record, 50):.0f} / {percentile(to_record, 99):.0f} |"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--backend", choices=("redis", "memory"), nargs="+", default=["redis", "memory"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # per-task info lines would dominate what we measure
    server = LocalRedis().start() if "redis" in args.backend else None
    try:
        results = []
        for backend in args.backend:
            url = server.url if backend == "redis" and server else "memory://"
            for concurrency in args.concurrency:
                results.append(await measure(url, backend, args.tasks, concurrency))
    finally:
        if server is not None:
            server.stop()
    print(table(results))


if __name__ == "__main__":
    asyncio.run(main())
