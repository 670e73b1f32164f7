"""`codeforge bench workflow`: end-to-end latency and workflows per second of a three-step chain and a
three-way fan-out with a join (no-op steps), for codeforge (embedded and on Redis), Celery canvas on the same
redis-server, Temporal's dev server and Hatchet-lite (whose row says why it cannot run here).

Method (bench/README.md has the long form), per engine: start its servers and workers, warm up with a few
workflows of each shape, then for each shape
- latency: one workflow at a time, from the client's start call to the client seeing it succeed;
- throughput: `workflows` workflows started at once; workflows/s = workflows / (last seen done - first start).
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeforge.benchmarks.stats import percentile
from codeforge.benchmarks.workflow_engine import SHAPES, STEPS, EngineContext, Unavailable, WorkflowEngine

#: name -> (module, class, the pip distribution it needs, "" when built in)
ENGINES: dict[str, tuple[str, str, str]] = {
    "codeforge-embedded": ("codeforge.benchmarks.workflow_codeforge", "CodeforgeEmbedded", ""),
    "codeforge-redis": ("codeforge.benchmarks.workflow_codeforge", "CodeforgeRedis", ""),
    "celery": ("codeforge.benchmarks.peers.celery_canvas", "CeleryCanvas", "celery"),
    "temporal": ("codeforge.benchmarks.peers.temporal_peer", "TemporalPeer", "temporalio"),
    "hatchet": ("codeforge.benchmarks.peers.hatchet_peer", "HatchetLite", ""),
}
INSTALL_HINT = "pip install 'codeforge[bench]' (or `make bench`)"
#: A throughput run that takes longer than this is declared broken (the engine is stuck).
THROUGHPUT_TIMEOUT_S = 300.0


@dataclass
class WorkflowBenchConfig:
    systems: list[str]
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    samples: int = 200  # latency samples per shape
    latency_budget_s: float = 20.0  # per shape: a slow engine gives fewer samples (the notes say so)
    workflows: int = 500  # per throughput run
    warmup: int = 20  # sequential workflows of each shape before measuring

    @classmethod
    def quick(cls, systems: list[str]) -> WorkflowBenchConfig:
        """Small counts for smoke tests; figures from it are not for publishing."""
        return cls(systems=systems, samples=20, latency_budget_s=5.0, workflows=40, warmup=3)


@dataclass
class WorkflowRow:
    system: str
    label: str
    version: str
    shape: str
    steps: int
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    samples: int = 0
    workflows_per_s: float | None = None
    workflows: int = 0
    notes: str = ""  # caveats; why a row is empty
    deployment: str = ""  # how the engine ran (workers, storage)
    #: engine-specific figures: the queue round trip and the orchestrator's overhead per step for codeforge
    extra: dict[str, Any] = field(default_factory=dict)

    def add_note(self, note: str) -> None:
        self.notes = f"{self.notes}; {note}" if self.notes else note

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "label": self.label,
            "version": self.version,
            "shape": self.shape,
            "steps": self.steps,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "samples": self.samples,
            "workflows_per_s": self.workflows_per_s,
            "workflows": self.workflows,
            "notes": self.notes,
            "deployment": self.deployment,
            **self.extra,
        }


def _round(value: float) -> float:
    return round(value, 3)


class WorkflowRunner:
    def __init__(
        self, cfg: WorkflowBenchConfig, url: str, logdir: Path, progress: Callable[[str], None] = print
    ) -> None:
        self.cfg = cfg
        self.url = url
        self.logdir = logdir
        self.progress = progress

    def _load(self, name: str, ctx: EngineContext) -> WorkflowEngine | str:
        module, cls, dist = ENGINES[name]
        try:
            engine_cls = getattr(importlib.import_module(module), cls)
        except ImportError as exc:
            if not dist:
                raise
            self.progress(f"{name}: {dist} is not installed ({exc.name}); {INSTALL_HINT}")
            return f"not installed: {INSTALL_HINT}"
        engine: WorkflowEngine = engine_cls(ctx)
        return engine

    def _rows(self, name: str, engine: WorkflowEngine | None, notes: str) -> list[WorkflowRow]:
        label = engine.label if engine is not None else name
        version = engine.version() if engine is not None else "-"
        return [WorkflowRow(name, label, version, s, STEPS[s], notes=notes) for s in self.cfg.shapes]

    async def run(self) -> list[WorkflowRow]:
        rows: list[WorkflowRow] = []
        for name in self.cfg.systems:
            ctx = EngineContext(self.url, self.logdir, uuid.uuid4().hex[:8])
            loaded = self._load(name, ctx)
            if isinstance(loaded, str):
                rows += self._rows(name, None, loaded)
                continue
            rows += await self._measure(name, loaded)
        return rows

    async def _measure(self, name: str, engine: WorkflowEngine) -> list[WorkflowRow]:
        self.progress(f"{name}: starting")
        try:
            await engine.start()
        except Unavailable as exc:
            await engine.stop()
            self.progress(f"{name}: unavailable: {exc}")
            return self._rows(name, engine, str(exc))
        rows = []
        try:
            for shape in self.cfg.shapes:
                for i in range(self.cfg.warmup):
                    await engine.run(shape, f"warm-{engine.ctx.run_id}-{shape}-{i}")
            for shape in self.cfg.shapes:
                row = WorkflowRow(name, engine.label, engine.version(), shape, STEPS[shape])
                row.deployment = engine.describe()
                await self._latency(engine, row)
                await self._throughput(engine, row)
                rows.append(row)
            self._overhead(rows, await engine.overhead_probe())
        except Exception as exc:  # an engine that breaks mid-run: its rows say how, the others still run
            self.progress(f"{name}: failed: {exc!r}")
            done = {r.shape for r in rows}
            rows += [
                WorkflowRow(name, engine.label, engine.version(), s, STEPS[s], notes=f"failed: {exc!r}"[:300])
                for s in self.cfg.shapes
                if s not in done
            ]
        finally:
            await engine.stop()
        return rows

    @staticmethod
    def _overhead(rows: list[WorkflowRow], probe: dict[str, float] | None) -> None:
        """A chain's steps run one after another, so its latency / steps - the queue's round trip is what
        the orchestrator adds to each step. The harness process's CPU time per step during the latency
        runs is the same cost measured in CPU, which a busy machine inflates far less than latency (for
        codeforge on Redis that process is the orchestrator alone; embedded, the agent too)."""
        if not probe:  # a peer: the harness is only its client
            for row in rows:
                row.extra.pop("harness_cpu_per_step_ms", None)
            return
        round_trip = probe["queue_round_trip_p50_ms"]
        for row in rows:
            cpu = row.extra.get("harness_cpu_per_step_ms")
            row.extra = dict(probe) | ({"harness_cpu_per_step_ms": cpu} if cpu is not None else {})
            if row.shape == "chain" and row.p50_ms is not None:
                overhead = row.p50_ms / row.steps - round_trip
                row.extra["overhead_per_step_ms"] = _round(overhead)
                row.add_note(f"{overhead:.2f} ms/step over the queue's {round_trip:.2f} ms round trip")

    async def _latency(self, engine: WorkflowEngine, row: WorkflowRow) -> None:
        samples: list[float] = []
        budget_end = time.monotonic() + self.cfg.latency_budget_s
        cpu_started = time.process_time()
        for i in range(self.cfg.samples):
            wid = f"lat-{engine.ctx.run_id}-{row.shape}-{i}"
            started = time.perf_counter()
            await engine.run(row.shape, wid)
            samples.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > budget_end:
                break
        cpu_per_step = (time.process_time() - cpu_started) / (len(samples) * row.steps)
        row.extra["harness_cpu_per_step_ms"] = _round(cpu_per_step * 1000)
        ordered = sorted(samples)
        row.p50_ms = _round(statistics.median(ordered))
        row.p95_ms = _round(percentile(ordered, 95))
        row.p99_ms = _round(percentile(ordered, 99))
        row.samples = len(samples)
        if len(samples) < self.cfg.samples:
            row.add_note(f"{len(samples)} latency samples in the {self.cfg.latency_budget_s:g}s budget")
        self.progress(
            f"{row.system} {row.shape}: latency p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms "
            f"({len(samples)} workflows)"
        )

    async def _throughput(self, engine: WorkflowEngine, row: WorkflowRow) -> None:
        ids = [f"tp-{engine.ctx.run_id}-{row.shape}-{i}" for i in range(self.cfg.workflows)]
        started = time.perf_counter()
        await asyncio.wait_for(engine.run_many(row.shape, ids), THROUGHPUT_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        row.workflows = len(ids)
        row.workflows_per_s = round(len(ids) / elapsed, 1)
        rate = f"{row.workflows_per_s:,.1f} workflows/s"
        self.progress(f"{row.system} {row.shape}: {rate} ({len(ids)} started at once)")
