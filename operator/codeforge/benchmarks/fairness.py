"""`codeforge bench fairness`: one Workflow's backlog vs a small Workflow arriving later (issue 14).

Per backend, two modes on the same queue code, side by side (`runs` times each, alternating):
- `fair`: each Workflow is its own key (the default), so the small one takes turns with the backlog;
- `fifo`: both Workflows' tasks share one key, which is first come first served: the order before fair share.

A run: `agents` consumers claim, hold each task `duration_ms` (the handler's work) and complete it. Workflow
"big" enqueues `big_tasks` (in batches, as a fan-out does); once `head_start` of them have started, "small"
enqueues `small_tasks`. The wait of a task is its start minus its enqueue; "big" throughput is its tasks
over the time from its first start to its last completion. Consumers run in this process (asyncio), one
connection each on Redis, so both runs pay the same client costs and the ratio compares the queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from codeforge.api.task import Task
from codeforge.benchmarks.stats import percentile
from codeforge.queue import TaskQueue, open_queue

BIG, SMALL = "big", "small"


@dataclass
class FairnessConfig:
    backends: list[str] = field(default_factory=lambda: ["memory", "redis"])
    agents: int = 16
    big_tasks: int = 10_000
    small_tasks: int = 10
    duration_ms: float = 10.0
    head_start: int = 1_000
    batch: int = 500
    runs: int = 3

    @classmethod
    def quick(cls, backends: list[str]) -> FairnessConfig:
        return cls(
            backends=backends, agents=4, big_tasks=400, small_tasks=5, duration_ms=2.0, head_start=50, runs=1
        )


@dataclass
class FairnessRow:
    backend: str
    mode: str  # fair | fifo
    agents: int
    duration_ms: float
    big_tasks: int
    small_tasks: int
    big_p50_ms: float
    big_p99_ms: float
    small_p50_ms: float
    small_p99_ms: float
    small_max_ms: float
    big_throughput_per_s: float
    #: this row's big throughput over the fifo row's of the same backend (fifo: 1.0)
    throughput_vs_fifo: float = 1.0

    @property
    def small_p99_durations(self) -> float:
        return self.small_p99_ms / self.duration_ms

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "small_p99_task_durations": round(self.small_p99_durations, 2)}


@dataclass
class _Run:
    sent: dict[str, int] = field(default_factory=dict)  # task id -> enqueue ns
    started: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    big_started: int = 0
    head: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


async def _consumer(
    queue: TaskQueue, pool: str, name: str, cfg: FairnessConfig, run: _Run, total: int
) -> None:
    hold = cfg.duration_ms / 1000.0
    while not run.finished.is_set():
        lease = await queue.claim(pool, name, timeout=0.5)
        if lease is None:
            continue
        run.started[lease.id] = time.time_ns()
        if lease.task.workflow == BIG:
            run.big_started += 1
            if run.big_started >= cfg.head_start:
                run.head.set()
        await asyncio.sleep(hold)
        await queue.complete(lease, None)
        run.done[lease.id] = time.time_ns()
        if len(run.done) >= total:
            run.finished.set()


async def _enqueue(queue: TaskQueue, tasks: list[Task], run: _Run, batch: int) -> None:
    for start in range(0, len(tasks), batch):
        chunk = tasks[start : start + batch]
        now = time.time_ns()
        for task in chunk:
            run.sent[task.id] = now
        await queue.enqueue_many(chunk)


def _tasks(pool: str, workflow: str, count: int, shared_key: str) -> list[Task]:
    # fair_key only when set: the same code then also measures a queue without fair share (README's method).
    extra = {"fair_key": shared_key} if shared_key else {}
    return [Task(id=f"{workflow}-{i}", pool=pool, workflow=workflow, **extra) for i in range(count)]


async def run_once(url: str, backend: str, mode: str, cfg: FairnessConfig) -> FairnessRow:
    queue = await open_queue(url)
    pool = f"bench-fair-{mode}-{time.time_ns() % 10**9}"
    shared = "everyone" if mode == "fifo" else ""
    run = _Run()
    total = cfg.big_tasks + cfg.small_tasks
    consumers = [
        asyncio.ensure_future(_consumer(queue, pool, f"agent-{i}", cfg, run, total))
        for i in range(cfg.agents)
    ]
    try:
        await _enqueue(queue, _tasks(pool, BIG, cfg.big_tasks, shared), run, cfg.batch)
        await asyncio.wait_for(run.head.wait(), 600)
        await _enqueue(queue, _tasks(pool, SMALL, cfg.small_tasks, shared), run, cfg.batch)
        await asyncio.wait_for(run.finished.wait(), 3600)
    finally:
        run.finished.set()
        for task in consumers:
            task.cancel()
        for task in consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await queue.close()
    return _row(backend, mode, cfg, run)


def _row(backend: str, mode: str, cfg: FairnessConfig, run: _Run) -> FairnessRow:
    def waits(prefix: str) -> list[float]:
        return sorted((run.started[t] - run.sent[t]) / 1e6 for t in run.started if t.startswith(prefix + "-"))

    big, small = waits(BIG), waits(SMALL)
    big_ids = [t for t in run.done if t.startswith(BIG + "-")]
    span = (max(run.done[t] for t in big_ids) - min(run.started[t] for t in big_ids)) / 1e9
    return FairnessRow(
        backend=backend,
        mode=mode,
        agents=cfg.agents,
        duration_ms=cfg.duration_ms,
        big_tasks=cfg.big_tasks,
        small_tasks=cfg.small_tasks,
        big_p50_ms=round(percentile(big, 50), 2),
        big_p99_ms=round(percentile(big, 99), 2),
        small_p50_ms=round(percentile(small, 50), 2),
        small_p99_ms=round(percentile(small, 99), 2),
        small_max_ms=round(small[-1], 2),
        big_throughput_per_s=round(len(big_ids) / span, 1),
    )


async def run_all(
    urls: dict[str, str], cfg: FairnessConfig, progress: Callable[[str], None]
) -> tuple[list[FairnessRow], list[FairnessRow]]:
    """(summary rows: per backend and mode the median of `runs` runs; every run). The modes alternate which
    goes first, so a machine getting busier or quieter does not favour one."""
    summary: list[FairnessRow] = []
    every: list[FairnessRow] = []
    for backend in cfg.backends:
        by_mode: dict[str, list[FairnessRow]] = {"fifo": [], "fair": []}
        for n in range(cfg.runs):
            for mode in ("fifo", "fair") if n % 2 == 0 else ("fair", "fifo"):
                progress(
                    f"[{backend}] run {n + 1}/{cfg.runs} {mode}: {cfg.big_tasks} + {cfg.small_tasks} tasks, "
                    f"{cfg.agents} agents"
                )
                by_mode[mode].append(await run_once(urls[backend], backend, mode, cfg))
        fifo, fair = _median(by_mode["fifo"]), _median(by_mode["fair"])
        fair.throughput_vs_fifo = round(fair.big_throughput_per_s / fifo.big_throughput_per_s, 3)
        for row in by_mode["fair"]:
            row.throughput_vs_fifo = round(row.big_throughput_per_s / fifo.big_throughput_per_s, 3)
        summary += [fifo, fair]
        every += by_mode["fifo"] + by_mode["fair"]
    return summary, every


def _median(rows: list[FairnessRow]) -> FairnessRow:
    """Each figure's median over the runs (the worst small-Workflow wait: its maximum)."""

    def mid(name: str) -> float:
        return float(statistics.median(getattr(row, name) for row in rows))

    first = rows[0]
    return FairnessRow(
        backend=first.backend,
        mode=first.mode,
        agents=first.agents,
        duration_ms=first.duration_ms,
        big_tasks=first.big_tasks,
        small_tasks=first.small_tasks,
        big_p50_ms=mid("big_p50_ms"),
        big_p99_ms=mid("big_p99_ms"),
        small_p50_ms=mid("small_p50_ms"),
        small_p99_ms=mid("small_p99_ms"),
        small_max_ms=max(row.small_max_ms for row in rows),
        big_throughput_per_s=mid("big_throughput_per_s"),
    )
