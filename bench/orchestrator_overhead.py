"""Orchestration overhead per workflow step (LangGraph + checkpoint + dispatch), and workflows per second.

Method, per backend (memory: memory queue + LangGraph's InMemorySaver; redis: a private redis-server with
our Redis queue and Redis checkpointer), with one in-process `echo` agent in the same event loop:
- raw: one task at a time, `enqueue` then `wait_result` -- the queue and agent round trip alone;
- step: a workflow of `--steps` sequential echo steps, run `--runs` times; time per step;
- overhead = step - raw: what the orchestrator adds to each step (graph, CEL, checkpoint, events);
- throughput: `--concurrent` three-step workflows (one a 3-way fan-out) started at once; workflows/s.

    .venv/bin/python bench/orchestrator_overhead.py [--backend memory redis] [--steps 20] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from codeforge.api.task import Task
from codeforge.api.workflow import parse_workflow_spec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
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


async def measure(backend: str, url: str, steps: int, runs: int, concurrent: int) -> dict[str, Any]:
    queue = await open_queue(url)
    saver = await open_checkpointer(url) if backend == "redis" else None
    runner = WorkflowRunner(queue, saver)
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


async def measure_all(backends: list[str], steps: int, runs: int, concurrent: int) -> list[dict[str, Any]]:
    results = []
    for backend in backends:
        if backend == "memory":
            results.append(await measure("memory", "memory://", steps, runs, concurrent))
            continue
        server = LocalRedis().start()
        try:
            results.append(await measure("redis", server.url, steps, runs, concurrent))
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", nargs="+", default=["memory", "redis"], choices=["memory", "redis"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(measure_all(args.backend, args.steps, args.runs, args.concurrent))
    header = ["backend", "raw_round_trip_ms", "step_ms", "overhead_per_step_ms", "workflows_per_s"]
    print(" | ".join(header))
    for row in results:
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
            json.dump({"machine": machine, "command": " ".join(sys.argv), "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
