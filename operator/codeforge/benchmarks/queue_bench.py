"""`codeforge bench queue`: enqueue-to-start latency, idle wake-up and throughput of codeforge's queue,
a raw LPUSH/BRPOP floor and peer task queues, side by side on one redis-server.

Method (bench/README.md has the long form): for each system and consumer count the harness launches the
system's workers as separate processes, warms them up, then
- latency: sends one task at a time (the next only after the previous one started, plus a short gap), so
  the figure is delivery latency, not queueing;
- idle-wakeup: the same after 1-2 s of silence (randomised, so a poller's phase does not line up), the
  case where polling consumers lose time;
- throughput: sends `tasks` tasks as fast as the library's producer API allows and waits until workers
  report them all; tasks/s = tasks / (last task done - first enqueue call).
Latency is the handler's start stamp minus the producer's stamp (both `time.time_ns()` on one host).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from codeforge.benchmarks.recorder import ENV_QUEUE, ENV_URL, Record
from codeforge.benchmarks.stats import percentile
from codeforge.benchmarks.system import BenchContext, System, WorkerGroup

#: name -> (module, class, the pip distribution that must be installed for it, "" when built in)
SYSTEMS: dict[str, tuple[str, str, str]] = {
    "codeforge": ("codeforge.benchmarks.codeforge_system", "CodeforgeSystem", ""),
    # codeforge per durability mode (README, "Durability"): the server's AOF set for the mode during the run
    "codeforge-fast": ("codeforge.benchmarks.codeforge_system", "CodeforgeFast", ""),
    "codeforge-fsync": ("codeforge.benchmarks.codeforge_system", "CodeforgeFsync", ""),
    "codeforge-replicated": ("codeforge.benchmarks.codeforge_system", "CodeforgeReplicated", ""),
    "raw": ("codeforge.benchmarks.raw_floor", "RawFloor", ""),
    # the floor on the server as each durable mode runs it, for a like-for-like ratio
    "raw-fsync": ("codeforge.benchmarks.raw_floor", "RawFsync", ""),
    "raw-replicated": ("codeforge.benchmarks.raw_floor", "RawReplicated", ""),
    # ... and with its consumer waiting for the replica too, as codeforge's does in that mode
    "raw-replicated-confirmed": ("codeforge.benchmarks.raw_floor", "RawReplicatedConfirmed", ""),
    "celery": ("codeforge.benchmarks.peers.celery_peer", "CeleryPeer", "celery"),
    "arq": ("codeforge.benchmarks.peers.arq_peer", "ArqPeer", "arq"),
    "rq": ("codeforge.benchmarks.peers.rq_peer", "RqPeer", "rq"),
    "dramatiq": ("codeforge.benchmarks.peers.dramatiq_peer", "DramatiqPeer", "dramatiq"),
}
INSTALL_HINT = "pip install 'codeforge[bench]' (or `make bench`)"
SCENARIOS = ("latency", "idle-wakeup", "throughput")

#: Pause between latency samples: consumers are back in their claim before the next task arrives.
LATENCY_GAP_S = 0.002
#: How long a worker may take to come up and run its first task (Celery's start-up takes seconds).
STARTUP_TIMEOUT_S = 60.0
#: How long one task may take to start in a latency sample before the session is declared broken.
SAMPLE_TIMEOUT_S = 30.0


#: The floor each codeforge system's latency is held to (issue 15: p99 within 1.5x of it), first of those the
#: run measured: LPUSH/BRPOP on the same server setup; in `replicated`, preferably the floor whose consumer
#: also confirms its pop with a WAIT, as codeforge's does. `codeforge-fast` (appendfsync everysec) has none.
FLOOR_OF = {
    "codeforge": ("raw",),
    "codeforge-fsync": ("raw-fsync",),
    "codeforge-replicated": ("raw-replicated-confirmed", "raw-replicated"),
}


#: A system and its floor measured in one run take their latency samples in turns, this many at a time, the
#: other's workers paused meanwhile (bench/README.md, "The floor and codeforge in turns"): a durable mode's
#: tail is the disk's, whose slow spells come and go, so cells measured minutes apart compared its moods.
PAIRED_BLOCK = 20


def pair_up(systems: list[str]) -> dict[str, str]:
    """system -> the floor whose latency is measured in turns with it: the first of its FLOOR_OF the run
    selected (each floor paired once)."""
    pairs: dict[str, str] = {}
    for name in systems:
        floor = next((f for f in FLOOR_OF.get(name, ()) if f in systems and f not in pairs.values()), None)
        if floor is not None:
            pairs[name] = floor
    return pairs


@dataclass
class BenchConfig:
    systems: list[str]
    consumers: list[int] = field(default_factory=lambda: [1, 3, 100, 500])
    throughput_consumers: list[int] = field(default_factory=lambda: [1, 16, 100])
    # p99 of 300 samples is the third-slowest, one scheduling slice on a shared machine; of 2,000, the 20th
    latency_samples: int = 2_000
    latency_budget_s: float = 10.0  # per consumer count: polling peers get fewer samples
    idle_samples: int = 5
    idle_quiet_s: float = 1.0
    # A random extra quiet, so the send does not phase-lock with a polling consumer's interval.
    idle_jitter_s: float = 1.0
    tasks: int = 20_000
    throughput_budget_s: float = 30.0

    @classmethod
    def quick(cls, systems: list[str]) -> BenchConfig:
        """Small counts for smoke tests; figures from it are not for publishing."""
        return cls(
            systems=systems,
            consumers=[1, 3],
            throughput_consumers=[1, 3],
            latency_samples=30,
            latency_budget_s=3.0,
            idle_samples=1,
            idle_quiet_s=0.5,
            idle_jitter_s=0.1,
            tasks=1_000,
            throughput_budget_s=10.0,
        )


@dataclass
class Row:
    system: str
    version: str
    consumers: int
    scenario: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    throughput_per_s: float | None = None
    tasks: int = 0
    notes: str = ""  # how the consumers were run, then any caveat
    enqueue_per_s: float | None = None  # throughput runs: how fast the producer alone sent the tasks
    p99_vs_floor: float | None = None  # latency runs of a system in FLOOR_OF, when the run has its floor

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "version": self.version,
            "consumers": self.consumers,
            "scenario": self.scenario,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "throughput_per_s": self.throughput_per_s,
            "tasks": self.tasks,
            "enqueue_per_s": self.enqueue_per_s,
            "p99_vs_floor": self.p99_vs_floor,
            "notes": self.notes,
        }


def compare_to_floors(rows: list[Row]) -> None:
    """Set each codeforge latency row's p99 over its floor's at the same consumer count (FLOOR_OF), where the
    run measured both."""
    floors = {(r.system, r.consumers): r.p99_ms for r in rows if r.scenario == "latency" and r.p99_ms}
    for row in rows:
        if row.scenario != "latency" or row.p99_ms is None:
            continue
        found = [
            floors[name, row.consumers]
            for name in FLOOR_OF.get(row.system, ())
            if (name, row.consumers) in floors
        ]
        if found:
            row.p99_vs_floor = round(row.p99_ms / found[0], 2)


def fill_latency(row: Row, latencies_ns: list[int]) -> Row:
    values = sorted(ns / 1e6 for ns in latencies_ns)
    if values:
        row.p50_ms, row.p95_ms, row.p99_ms = (round(percentile(values, q), 3) for q in (50, 95, 99))
        row.max_ms = round(values[-1], 3)
    row.tasks = len(values)
    return row


class Collector:
    """Reads the records workers push (batches joined by ';') from one Redis list."""

    def __init__(self, client: redis.Redis, key: str, group: WorkerGroup) -> None:
        self.client = client
        self.key = key
        self.group = group
        self.records: dict[int, Record] = {}
        self.duplicates = 0

    def _drain(self, block_s: float) -> list[int]:
        """Wait up to `block_s` for records; store them and return the new sequence numbers."""
        # redis-py types BLPOP's timeout as int, but Redis >= 6 takes fractional seconds.
        item: Any = self.client.blpop([self.key], timeout=block_s)  # type: ignore[arg-type]
        if item is None:
            return []
        blobs: list[bytes] = [item[1]]
        pipe = self.client.pipeline()
        pipe.lrange(self.key, 0, -1)
        pipe.delete(self.key)
        rest, _ = pipe.execute()
        blobs.extend(rest)
        new = []
        for blob in blobs:
            for rec in Record.decode_batch(blob):
                if rec.seq in self.records:
                    self.duplicates += 1  # a task delivered twice: reported in the notes
                else:
                    self.records[rec.seq] = rec
                    new.append(rec.seq)
        return new

    def wait_for(self, seqs: range, timeout: float) -> bool:
        """Block until every seq has a record (True) or the timeout passes (False)."""
        missing = {s for s in seqs if s not in self.records}
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 1.0
        while missing:
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_check:
                self.group.check_alive()
                next_check = now + 1.0
            missing.difference_update(self._drain(min(0.05, max(0.001, deadline - now))))
        return True


class Session:
    """One system's workers for one consumer count, and the phases measured with them."""

    def __init__(self, system: System, consumers: int, seq: list[int]) -> None:
        self.system = system
        self.consumers = consumers
        self._seq = seq  # shared per system, so task ids never repeat within a run

    def next_range(self, count: int) -> range:
        start = self._seq[0]
        self._seq[0] += count
        return range(start, start + count)

    async def warm_up(self, collector: Collector) -> None:
        first = self.next_range(1)
        await self.system.send(first[0])
        if not collector.wait_for(first, STARTUP_TIMEOUT_S):
            raise TimeoutError(f"workers did not run a first task within {STARTUP_TIMEOUT_S:.0f} s")
        # One task per consumer (up to 100), so connections and threads exist before measuring.
        burst = self.next_range(min(self.consumers, 100))
        await self.system.send_many(burst)
        if not collector.wait_for(burst, STARTUP_TIMEOUT_S):
            raise TimeoutError("workers did not finish the warm-up burst")
        for _ in range(3):
            await self.one(collector)
        await asyncio.sleep(0.2)

    async def one(self, collector: Collector) -> int:
        """Send one task and wait for it to start: its latency in ns."""
        seq = self.next_range(1)
        await self.system.send(seq[0])
        if not collector.wait_for(seq, SAMPLE_TIMEOUT_S):
            raise TimeoutError(f"a task did not start within {SAMPLE_TIMEOUT_S:.0f} s")
        rec = collector.records[seq[0]]
        return rec.start_ns - rec.sent_ns

    async def latency(self, collector: Collector, cfg: BenchConfig, row: Row) -> Row:
        samples: list[int] = []
        deadline = time.monotonic() + cfg.latency_budget_s
        while len(samples) < cfg.latency_samples and time.monotonic() < deadline:
            samples.append(await self.one(collector))
            await asyncio.sleep(LATENCY_GAP_S)
        if len(samples) < cfg.latency_samples:
            row.notes = _join(row.notes, f"{len(samples)} samples in the {cfg.latency_budget_s:.0f} s budget")
        return fill_latency(row, samples)

    async def idle(self, collector: Collector, cfg: BenchConfig, row: Row) -> Row:
        samples: list[int] = []
        for _ in range(cfg.idle_samples):
            await asyncio.sleep(cfg.idle_quiet_s + random.uniform(0.0, cfg.idle_jitter_s))
            samples.append(await self.one(collector))
        return fill_latency(row, samples)

    async def throughput(self, collector: Collector, cfg: BenchConfig, row: Row) -> Row:
        seqs = self.next_range(cfg.tasks)
        first_ns = time.time_ns()
        await self.system.send_many(seqs)
        row.enqueue_per_s = round(len(seqs) / ((time.time_ns() - first_ns) / 1e9), 1)
        complete = collector.wait_for(seqs, cfg.throughput_budget_s)
        done = [collector.records[s] for s in seqs if s in collector.records]
        fill_latency(row, [r.start_ns - r.sent_ns for r in done])
        if done:
            elapsed_ns = max(r.done_ns for r in done) - first_ns
            row.throughput_per_s = round(len(done) / (elapsed_ns / 1e9), 1)
        if not complete:
            row.notes = _join(
                row.notes,
                f"{len(done)} of {cfg.tasks} tasks done in the {cfg.throughput_budget_s:.0f} s budget",
            )
        return row


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


Progress = Callable[[str], None]


@dataclass
class Runner:
    cfg: BenchConfig
    url: str
    owns_server: bool  # a private server may be flushed between sessions; a user's never is
    logdir: Path
    progress: Progress
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    async def run(self) -> list[Row]:
        pairs = pair_up(self.cfg.systems)
        rows: list[Row] = []
        for name in self.cfg.systems:
            if name in pairs:
                rows += await self.run_pair(pairs[name], name)
            elif name not in pairs.values():
                rows += await self.run_system(name)
        compare_to_floors(rows)
        return rows

    def _load(self, name: str, ctx: BenchContext) -> System | str:
        module_name, class_name, dist = SYSTEMS[name]
        # Peer modules read these at import time (their apps and actors are module globals).
        os.environ[ENV_URL] = self.url
        os.environ[ENV_QUEUE] = ctx.queue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if dist and exc.name and exc.name.split(".")[0] == dist:
                return f"{dist} is not installed: {INSTALL_HINT}"
            raise
        system: System = getattr(module, class_name)(ctx)
        return system

    def _ctx(self, name: str, label: str) -> BenchContext:
        return BenchContext(
            url=self.url,
            queue=f"cfbench-{self.run_id}-{name}",
            record_key=f"cfbench:{self.run_id}:records:{label}",
            logdir=self.logdir,
            owns_server=self.owns_server,
        )

    async def _open(self, name: str) -> System | list[Row]:
        """The system, connected; or, when it cannot be, its rows saying why."""
        loaded = self._load(name, self._ctx(name, name))
        if isinstance(loaded, str):
            self.progress(f"[{name}] skipped: {loaded}")
            return [Row(name, "-", n, s, notes=loaded) for s, n in self._plan_flat()]
        try:
            await loaded.open()
        except Exception as exc:
            failure = f"failed: cannot connect the producer: {exc}"
            self.progress(f"[{name}] {failure}")
            return [Row(name, loaded.version(), n, s, notes=failure) for s, n in self._plan_flat()]
        return loaded

    async def run_system(self, name: str) -> list[Row]:
        loaded = await self._open(name)
        if isinstance(loaded, list):
            return loaded
        version = loaded.version()
        seq = [0]
        rows: list[Row] = []
        try:
            for consumers, scenarios in self._plan():
                base = Row(name, version, consumers, "")
                reason = loaded.unsupported(consumers)
                if reason:
                    self.progress(f"[{name}] {consumers} consumers: not run ({reason})")
                    rows += [Row(name, version, consumers, s, notes=reason) for s in scenarios]
                    continue
                rows += await self._sessions(loaded, name, consumers, scenarios, seq, base)
        finally:
            await loaded.close()
            self._clean_up()
        return rows

    async def run_pair(self, floor: str, name: str) -> list[Row]:
        """A system and its floor: their latency in turns (PAIRED_BLOCK), the rest one after the other."""
        first = await self._open(floor)
        if isinstance(first, list):
            return first + await self.run_system(name)
        second = await self._open(name)
        if isinstance(second, list):
            await first.close()
            self._clean_up()
            return await self.run_system(floor) + second
        pair = [Contender(floor, first), Contender(name, second)]
        rows: list[Row] = []
        try:
            for consumers, scenarios in self._plan():
                shared = [s for s in scenarios if s != "throughput"]
                if shared:
                    rows += await self._paired_session(pair, consumers, shared)
                if "throughput" in scenarios:
                    for one in pair:
                        base = Row(one.name, one.version, consumers, "")
                        rows += await self._sessions(
                            one.system, one.name, consumers, ["throughput"], one.seq, base
                        )
        finally:
            await second.close()  # in turn: the floor's server settings (and replica) were there first
            await first.close()
            self._clean_up()
        return rows

    def _clean_up(self) -> None:
        """Drop what a system left: all of it on a private server, this run's named keys otherwise."""
        client = redis.Redis.from_url(self.url)
        try:
            if self.owns_server:
                client.flushdb()
                return
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"*cfbench-{self.run_id}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        except redis.RedisError as exc:
            self.progress(f"could not clean up benchmark keys: {exc}")
        finally:
            client.close()

    def _plan(self) -> list[tuple[int, list[str]]]:
        counts = sorted(set(self.cfg.consumers) | set(self.cfg.throughput_consumers))
        plan = []
        for n in counts:
            scenarios = ["latency", "idle-wakeup"] if n in self.cfg.consumers else []
            if n in self.cfg.throughput_consumers:
                scenarios.append("throughput")
            plan.append((n, scenarios))
        return plan

    def _plan_flat(self) -> list[tuple[str, int]]:
        return [(s, n) for n, scenarios in self._plan() for s in scenarios]

    async def _sessions(
        self, system: System, name: str, consumers: int, scenarios: list[str], seq: list[int], base: Row
    ) -> list[Row]:
        # Latency and throughput may want different worker settings (codeforge batches claims for throughput).
        groups: dict[tuple[tuple[str, ...], ...], list[str]] = {}
        for scenario in scenarios:
            cmds = system.worker_commands(consumers, throughput=scenario == "throughput")
            groups.setdefault(tuple(tuple(c) for c in cmds), []).append(scenario)
        rows: list[Row] = []
        for key, group_scenarios in groups.items():
            argv = [list(c) for c in key]
            rows += await self._session(system, name, consumers, argv, group_scenarios, seq, base)
        return rows

    async def _session(
        self,
        system: System,
        name: str,
        consumers: int,
        cmds: list[list[str]],
        scenarios: list[str],
        seq: list[int],
        base: Row,
    ) -> list[Row]:
        label = f"{name}-{consumers}-{'+'.join(scenarios)}"
        system.ctx = self._ctx(name, label)
        client = redis.Redis.from_url(self.url)
        group = WorkerGroup(cmds, system.env(consumers), self.logdir, label)
        collector = Collector(client, system.ctx.record_key, group)
        session = Session(system, consumers, seq)
        describe = system.describe(consumers)
        rows: list[Row] = []
        dirty = False  # tasks may be left in the queue
        self.progress(f"[{name}] {consumers} consumers ({describe}): starting workers")
        try:
            group.start()
            await session.warm_up(collector)
            for scenario in scenarios:
                row = Row(base.system, base.version, consumers, scenario, notes=describe)
                if scenario == "latency":
                    await session.latency(collector, self.cfg, row)
                elif scenario == "idle-wakeup":
                    await session.idle(collector, self.cfg, row)
                else:
                    await session.throughput(collector, self.cfg, row)
                dirty = dirty or (scenario == "throughput" and row.tasks < self.cfg.tasks)
                if collector.duplicates:
                    row.notes = _join(row.notes, f"{collector.duplicates} duplicate deliveries")
                rows.append(row)
                self.progress(f"[{name}] {consumers} consumers: {scenario}: {_summary(row)}")
        except Exception as exc:  # one broken system must not end the whole comparison
            dirty = True
            reason = _failure(exc)
            # The log directory is temporary, so the worker's own output (in the message) is shown now.
            self.progress(f"[{name}] {consumers} consumers: {reason}\n{str(exc)[-2000:]}")
            done = {r.scenario for r in rows}
            rows += [
                Row(base.system, base.version, consumers, s, notes=_join(describe, reason))
                for s in scenarios
                if s not in done
            ]
        finally:
            group.stop()
            if self.owns_server and dirty:
                client.flushdb()  # unfinished tasks must not slow the next session down
            client.delete(system.ctx.record_key)
            client.close()
        return rows

    async def _paired_session(self, pair: list[Contender], consumers: int, scenarios: list[str]) -> list[Row]:
        """Both systems' workers up at once; each measured while the other's are paused."""
        client = redis.Redis.from_url(self.url)
        rows: list[Row] = []
        done: set[str] = set()
        for one in pair:
            one.system.ctx = self._ctx(one.name, f"{one.name}-{consumers}-paired")
            cmds = one.system.worker_commands(consumers)
            one.group = WorkerGroup(cmds, one.system.env(consumers), self.logdir, one.system.ctx.queue)
            one.collector = Collector(client, one.system.ctx.record_key, one.group)
            one.session = Session(one.system, consumers, one.seq)
        try:
            for one in pair:
                self.progress(
                    f"[{one.name}] {consumers} consumers ({one.system.describe(consumers)}): starting workers"
                )
                one.group.start()
                await one.session.warm_up(one.collector)
                one.group.pause()
            for scenario in scenarios:
                if scenario == "latency":
                    samples = await _in_turns(pair, self.cfg)
                for i, one in enumerate(pair):
                    other = pair[1 - i].name
                    row = Row(
                        one.name, one.version, consumers, scenario, notes=one.system.describe(consumers)
                    )
                    if scenario == "latency":
                        row.notes = _join(row.notes, f"samples in turns with {other}'s")
                        if len(samples[i]) < self.cfg.latency_samples:
                            row.notes = _join(row.notes, f"{len(samples[i])} samples in the budget")
                        fill_latency(row, samples[i])
                    else:
                        one.group.resume()
                        await one.session.idle(one.collector, self.cfg, row)
                        one.group.pause()
                    if one.collector.duplicates:
                        row.notes = _join(row.notes, f"{one.collector.duplicates} duplicate deliveries")
                    rows.append(row)
                    self.progress(f"[{one.name}] {consumers} consumers: {scenario}: {_summary(row)}")
                done.add(scenario)
        except Exception as exc:  # one broken pair must not end the whole comparison
            reason = _failure(exc)
            self.progress(
                f"[{pair[0].name}, {pair[1].name}] {consumers} consumers: {reason}\n{str(exc)[-2000:]}"
            )
            rows += [
                Row(one.name, one.version, consumers, s, notes=_join(one.system.describe(consumers), reason))
                for one in pair
                for s in scenarios
                if s not in done
            ]
        finally:
            for one in pair:
                one.group.stop()
                client.delete(one.collector.key)
            if self.owns_server:
                client.flushdb()
            client.close()
        return rows


@dataclass
class Contender:
    """A system with its floor in a paired run, and its workers for the consumer count being measured."""

    name: str
    system: System
    seq: list[int] = field(default_factory=lambda: [0])
    group: WorkerGroup = field(init=False)
    collector: Collector = field(init=False)
    session: Session = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.version = self.system.version()


async def _in_turns(pair: list[Contender], cfg: BenchConfig) -> list[list[int]]:
    """Latency samples of each, PAIRED_BLOCK at a time in turn, the other's workers paused."""
    samples: list[list[int]] = [[] for _ in pair]
    deadline = time.monotonic() + cfg.latency_budget_s * len(pair)
    while time.monotonic() < deadline:
        left = [i for i, got in enumerate(samples) if len(got) < cfg.latency_samples]
        if not left:
            break
        for i in left:
            one = pair[i]
            one.group.resume()
            try:
                for _ in range(min(PAIRED_BLOCK, cfg.latency_samples - len(samples[i]))):
                    samples[i].append(await one.session.one(one.collector))
                    await asyncio.sleep(LATENCY_GAP_S)
            finally:
                one.group.pause()
    return samples


def _failure(exc: Exception) -> str:
    """A row's note for a session that broke: the first line of what went wrong."""
    text = str(exc).strip()
    return f"failed: {text.splitlines()[0] if text else type(exc).__name__}"


def _summary(row: Row) -> str:
    if row.p99_ms is None:
        return row.notes
    text = f"p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms over {row.tasks} tasks"
    if row.throughput_per_s is not None:
        text += f", {row.throughput_per_s:,.0f} tasks/s"
    return text
