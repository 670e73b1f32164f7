"""Orchestration overhead per workflow step (LangGraph + checkpoint + dispatch), and workflows per second.

Method, per backend (memory: memory queue + LangGraph's InMemorySaver; redis: a private redis-server with
our Redis queue and Redis checkpointer), with one in-process `echo` agent in the same event loop:
- raw: one task at a time, `enqueue` then `wait_result` -- the queue and agent round trip alone;
- step: a workflow of `--steps` sequential echo steps, run `--runs` times; time per step;
- overhead = step - raw: what the orchestrator adds to each step (graph, CEL, checkpoint, events);
- throughput: `--concurrent` three-step workflows (one a 3-way fan-out) started at once; workflows/s.
- waiting runs (issue 15's 10,000 Workflows): `--waiting` runs of a three-step chain started at once on a
  pool no agent serves, so each waits on its first task: runs/s to the last first enqueue, the process's CPU
  per run to its first enqueue (`time.process_time`), and, in a second pass under `tracemalloc`, what each
  waiting run holds once the runner parked it (`WorkflowRunner.park_after`; none on code without parking).

    .venv/bin/python bench/orchestrator_overhead.py [--backend memory redis] [--steps 20] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import itertools
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from typing import Any

from codeforge.api.task import Task
from codeforge.api.workflow import parse_workflow_spec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.events import EventKind, ProgressEvent
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis
from codeforge_agent import AgentConfig, HandlerConfig
from codeforge_agent.loop import run_agent


def chain(pool: str, steps: int) -> dict[str, Any]:
    names = [f"s{i}" for i in range(steps)]
    return {
        "input": {"n": 1},
        "steps": [{"name": n, "pool": pool, "input": "state.input"} for n in names],
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(names)],
    }


def small(pool: str) -> dict[str, Any]:
    return {
        "input": {"n": 1},
        "steps": [
            {"name": "a", "pool": pool, "input": "state.input"},
            {"name": "b", "pool": pool, "input": "state.input", "parallel": 3},
            {"name": "c", "pool": pool, "input": "state.input"},
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    }


async def raw_round_trip(queue: TaskQueue, pool: str, count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await queue.enqueue(Task(id=f"raw-{i}", pool=pool, payload={"n": 1}))
        await queue.wait_result(pool, f"raw-{i}", 10)
        samples.append(time.perf_counter() - started)
    return samples


def _runner(queue: TaskQueue, saver: Any) -> WorkflowRunner:
    return WorkflowRunner(queue, saver)


async def _start_waiting(runner: WorkflowRunner, pool: str, count: int, tag: str) -> list[asyncio.Task[Any]]:
    """Start `count` chains whose first task no agent takes; return once each has enqueued it."""
    spec = parse_workflow_spec(chain(pool, 3))
    enqueued = 0
    everyone = asyncio.Event()

    def emit(event: ProgressEvent) -> None:
        nonlocal enqueued
        if event.kind is EventKind.TASK_DISPATCHED:
            enqueued += 1
            if enqueued == count:
                everyone.set()

    jobs = [asyncio.create_task(runner.run(f"wait-{tag}-{i}", spec, emit=emit)) for i in range(count)]
    await everyone.wait()
    return jobs


async def _stop(jobs: list[asyncio.Task[Any]]) -> None:
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)


async def measure_waiting(backend: str, url: str, count: int) -> dict[str, Any]:
    queue = await open_queue(url)
    saver = await open_checkpointer(url) if backend == "redis" else None
    runner = _runner(queue, saver)
    park_after = getattr(runner, "park_after", None)
    pool = f"bench-idle-{uuid.uuid4().hex[:6]}"  # no agent: every run waits on its first task
    try:
        await _stop(await _start_waiting(runner, pool, 20, "warm"))
        gc.collect()
        cpu, started = time.process_time(), time.perf_counter()
        jobs = await _start_waiting(runner, pool, count, "timed")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await _stop(jobs)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        jobs = await _start_waiting(runner, pool, count, "held")
        # until every run parked (if the runner parks): a park waits for the graph to stop (slow here)
        await asyncio.sleep((park_after or 0) + 12.0)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        await _stop(jobs)
    finally:
        await queue.close()
        if saver is not None:
            await saver.aclose()
    return {
        "backend": backend,
        "waiting_runs": count,
        "start_runs_per_s": round(count / elapsed, 1),
        "cpu_ms_per_run_to_first_enqueue": round(cpu / count * 1000, 3),
        "kib_per_waiting_run": round(held / count / 1024, 1),
        "park_after_s": park_after,
        "parks": "park_after" in inspect.signature(WorkflowRunner).parameters,
    }


async def measure(backend: str, url: str, steps: int, runs: int, concurrent: int) -> dict[str, Any]:
    queue = await open_queue(url)
    saver = await open_checkpointer(url) if backend == "redis" else None
    runner = _runner(queue, saver)
    pool = f"bench-orch-{uuid.uuid4().hex[:6]}"
    stop = asyncio.Event()
    config = AgentConfig(
        pool=pool, queue_url=url, concurrency=64, handler=HandlerConfig(kind="echo"), health_port=None
    )
    agent = asyncio.create_task(run_agent(queue, config, stop))
    try:
        await raw_round_trip(queue, pool, 50)  # warm-up
        raw = statistics.median(await raw_round_trip(queue, pool, 300))
        spec = parse_workflow_spec(chain(pool, steps))
        await runner.run(f"warm-{pool}", spec)
        per_step = []
        for r in range(runs):
            started = time.perf_counter()
            outcome = await runner.run(f"chain-{pool}-{r}", spec)
            assert outcome.status == "succeeded", outcome.error
            per_step.append((time.perf_counter() - started) / steps)
        step = statistics.median(per_step)
        three = parse_workflow_spec(small(pool))
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(runner.run(f"many-{pool}-{i}", three) for i in range(concurrent)))
        elapsed = time.perf_counter() - started
        assert all(o.status == "succeeded" for o in outcomes)
    finally:
        stop.set()
        await agent
        await queue.close()
        if saver is not None:
            await saver.aclose()
    return {
        "backend": backend,
        "raw_round_trip_ms": round(raw * 1000, 3),
        "step_ms": round(step * 1000, 3),
        "overhead_per_step_ms": round((step - raw) * 1000, 3),
        "workflows_per_s": round(concurrent / elapsed, 1),
        "steps": steps,
        "runs": runs,
        "concurrent": concurrent,
    }


async def measure_all(
    backends: list[str], steps: int, runs: int, concurrent: int, waiting: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results, waits = [], []
    for backend in backends:
        server = LocalRedis().start() if backend == "redis" else None
        url = server.url if server is not None else "memory://"
        try:
            if runs:
                results.append(await measure(backend, url, steps, runs, concurrent))
            if waiting:
                waits.append(await measure_waiting(backend, url, waiting))
        finally:
            if server is not None:
                server.stop()
    return results, waits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", nargs="+", default=["memory", "redis"], choices=["memory", "redis"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--waiting", type=int, default=1000, help="waiting runs (0: skip)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results, waits = asyncio.run(
        measure_all(args.backend, args.steps, args.runs, args.concurrent, args.waiting)
    )
    for rows in (results, waits):
        if rows:
            header = list(rows[0])
            print(" | ".join(header))
            for row in rows:
                print(" | ".join(str(row[h]) for h in header))
    if args.json:
        machine = {
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 1),  # other work on the machine skews the figures
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with open(args.json, "w") as out:
            json.dump(
                {"machine": machine, "command": " ".join(sys.argv), "results": results, "waiting": waits},
                out,
                indent=2,
            )


if __name__ == "__main__":
    main()
