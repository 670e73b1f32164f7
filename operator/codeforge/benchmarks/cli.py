"""`codeforge bench ...` subcommands."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from codeforge import event_loop

app = typer.Typer(no_args_is_help=True)

# The options every `codeforge bench` command takes.
QuickOption = Annotated[
    bool, typer.Option("--quick", help="Small counts for a smoke test (figures not for publishing).")
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")]
RedisUrlOption = Annotated[
    str | None, typer.Option(help="Use this Redis instead of starting a private redis-server.")
]
T = TypeVar("T")
ALL_SYSTEMS = "codeforge,codeforge-fast,codeforge-fsync,codeforge-replicated,raw,celery,arq,rq,dramatiq"


@app.callback()
def _bench() -> None:
    """Benchmarks: queue and workflow-engine latency and throughput against peers."""


def _on_product_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the harness on the loop codeforge's processes run on (`codeforge.event_loop`), so the figures are
    the product's; the peers' clients in the harness share it."""
    try:
        factory = event_loop.choose()
    except event_loop.EventLoopError as exc:
        raise typer.BadParameter(str(exc), param_hint=event_loop.ENV) from None
    return event_loop.run(main(), factory)


def _names(value: str) -> list[str]:
    from codeforge.benchmarks.queue_bench import SYSTEMS

    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown system(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SYSTEMS)}"
        )
    return list(dict.fromkeys(names))


def _counts(value: str, flag: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{flag} takes a comma list of whole numbers, e.g. 1,3,100 (got {value!r})"
        ) from None
    if not counts or any(c < 1 for c in counts):
        raise typer.BadParameter(f"{flag} needs counts of at least 1, e.g. 1,3,100 (got {value!r})")
    return sorted(set(counts))


@app.command("queue")
def queue(
    systems: Annotated[str, typer.Option(help="Comma list of systems to measure.")] = ALL_SYSTEMS,
    consumers: Annotated[
        str | None, typer.Option(help="Consumer counts for the latency and idle-wakeup runs [1,3,100,500].")
    ] = None,
    throughput_consumers: Annotated[
        str | None, typer.Option(help="Consumer counts for the throughput runs [1,16,100].")
    ] = None,
    tasks: Annotated[int | None, typer.Option(min=1, help="Tasks per throughput run [20000].")] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="Latency samples per consumer count [2000].")
    ] = None,
    quick: QuickOption = False,
    json_path: JsonOption = None,
    redis_url: RedisUrlOption = None,
) -> None:
    """Enqueue-to-start latency, idle wake-up and throughput: codeforge vs a raw LPUSH/BRPOP floor, peers."""
    from codeforge.benchmarks.queue_bench import BenchConfig

    names = _names(systems)
    cfg = BenchConfig.quick(names) if quick else BenchConfig(systems=names)
    if consumers is not None:
        cfg.consumers = _counts(consumers, "--consumers")
    if throughput_consumers is not None:
        cfg.throughput_consumers = _counts(throughput_consumers, "--throughput-consumers")
    if tasks is not None:
        cfg.tasks = tasks
    if samples is not None:
        cfg.latency_samples = samples
    command = shlex.join(["codeforge", *sys.argv[1:]])
    raise typer.Exit(_run(cfg, json_path, redis_url, command))


@contextlib.contextmanager
def _benchmark_redis(
    err: Console, redis_url: str | None
) -> Iterator[tuple[str, dict[str, Any], bool] | None]:
    """(URL, machine facts, whether we started it) of the Redis a benchmark runs on: a private redis-server
    unless `redis_url` is given; None once the reason it cannot be had is printed."""
    import redis

    from codeforge.benchmarks import report
    from codeforge.queue.errors import QueueConfigError
    from codeforge.testing.redis_server import LocalRedis

    server: LocalRedis | None = None
    try:
        if redis_url is None:
            try:
                server = LocalRedis().start()
            except (QueueConfigError, RuntimeError) as exc:
                err.print(f"[red]error:[/red] cannot start a private redis-server: {exc}")
                yield None
                return
            url = server.url
        else:
            url = redis_url
        try:
            machine = report.machine_info(url)
        except (redis.RedisError, ValueError) as exc:
            err.print(
                f"[red]error:[/red] cannot reach Redis at {url!r} ({exc}): start it, fix the URL, "
                "or drop --redis-url to let the benchmark start its own redis-server"
            )
            yield None
            return
        err.print(f"benchmark Redis: {url} (Redis {machine['redis_version']})")
        yield url, machine, server is not None
    finally:
        if server is not None:
            server.stop()


def _run(cfg: object, json_path: Path | None, redis_url: str | None, command: str) -> int:
    import dataclasses

    from codeforge.benchmarks import report
    from codeforge.benchmarks.queue_bench import BenchConfig, Runner

    assert isinstance(cfg, BenchConfig)
    err = Console(stderr=True, highlight=False)

    def progress(line: str) -> None:
        err.print(line, markup=False)

    with _benchmark_redis(err, redis_url) as found:
        if found is None:
            return 2
        url, machine, owns_server = found
        with tempfile.TemporaryDirectory(prefix="codeforge-bench-") as logdir:
            runner = Runner(cfg, url, owns_server=owns_server, logdir=Path(logdir), progress=progress)
            rows = _on_product_loop(runner.run)
        report.print_table(rows, machine, Console(width=None if sys.stdout.isatty() else 150))
        if json_path is not None:
            settings = {k: v for k, v in dataclasses.asdict(cfg).items()}
            report.write_json(json_path, report.document(machine, command, rows, settings))
            err.print(f"wrote {json_path}")
        return 0


@app.command("fairness")
def fairness(
    backends: Annotated[str, typer.Option(help="Comma list: memory, redis.")] = "memory,redis",
    agents: Annotated[int, typer.Option(min=1, max=1000, help="Consumers claiming from the pool.")] = 16,
    big: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks of the backlog Workflow.")] = 10_000,
    small: Annotated[int, typer.Option(min=1, max=10_000, help="Tasks of the late Workflow.")] = 10,
    duration_ms: Annotated[float, typer.Option(min=0.0, max=10_000.0, help="Each task's work.")] = 10.0,
    runs: Annotated[int, typer.Option(min=1, max=50, help="Runs per mode; the table shows medians.")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="Small counts for a smoke test.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting a private redis-server.")
    ] = None,
) -> None:
    """Fair share: a Workflow's 10,000-task backlog vs 10 tasks of another arriving later, fair vs FIFO."""
    from codeforge.benchmarks.fairness import FairnessConfig

    names = [b.strip().lower() for b in backends.split(",") if b.strip()]
    if not names or any(b not in ("memory", "redis") for b in names):
        raise typer.BadParameter(f"--backends takes memory and/or redis (got {backends!r})")
    if quick:
        cfg = FairnessConfig.quick(names)
    else:
        cfg = FairnessConfig(
            backends=names,
            agents=agents,
            big_tasks=big,
            small_tasks=small,
            duration_ms=duration_ms,
            head_start=min(1000, max(big // 10, 1)),
            runs=runs,
        )
    command = shlex.join(["codeforge", *sys.argv[1:]])
    raise typer.Exit(_run_fairness(cfg, json_path, redis_url, command))


def _run_fairness(cfg: object, json_path: Path | None, redis_url: str | None, command: str) -> int:
    import dataclasses

    from rich.table import Table

    from codeforge.benchmarks import report
    from codeforge.benchmarks.fairness import FairnessConfig, run_all

    assert isinstance(cfg, FairnessConfig)
    err = Console(stderr=True, highlight=False)
    # The same private redis-server (or --redis-url) as the other benchmarks; none for memory alone.
    memory_only = ("", {"redis_version": None}, False)
    redis_for = (
        _benchmark_redis(err, redis_url) if "redis" in cfg.backends else contextlib.nullcontext(memory_only)
    )
    with redis_for as found:
        if found is None:
            return 2
        url, machine, _ = found
        urls = {"memory": "memory://", "redis": url}
        rows, every = _on_product_loop(lambda: run_all(urls, cfg, lambda line: err.print(line, markup=False)))
    title = f"Fair share: {cfg.agents} agents, tasks of {cfg.duration_ms:g} ms, median of {cfg.runs} runs"
    table = Table(title=title)
    for column in ("backend", "mode", "big p50 ms", "big p99 ms", "small p50 ms", "small p99 ms",
                   "small p99 (task durations)", "big tasks/s", "vs fifo"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "mode") else "right")
    for row in rows:
        figures = (row.big_p50_ms, row.big_p99_ms, row.small_p50_ms, row.small_p99_ms)
        table.add_row(
            row.backend,
            row.mode,
            *(f"{value:.1f}" for value in figures),
            f"{row.small_p99_durations:.1f}",
            f"{row.big_throughput_per_s:.0f}",
            f"{row.throughput_vs_fifo:.3f}",
        )
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    if json_path is not None:
        doc = {
            "machine": machine,
            "command": command,
            "settings": dataclasses.asdict(cfg),
            "results": [row.as_dict() for row in rows],
            "runs": [row.as_dict() for row in every],
        }
        report.write_json(json_path, doc)
        err.print(f"wrote {json_path}")
    return 0


ALL_ENGINES = "codeforge-embedded,codeforge-redis,celery,temporal,hatchet"


def _engines(value: str) -> list[str]:
    from codeforge.benchmarks.workflow_bench import ENGINES

    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown system(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(ENGINES)}"
        )
    return list(dict.fromkeys(names))


@app.command("workflow")
def workflow(
    systems: Annotated[str, typer.Option(help="Comma list of engines to measure.")] = ALL_ENGINES,
    samples: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="Latency samples per workflow shape [200].")
    ] = None,
    workflows: Annotated[
        int | None,
        typer.Option(min=1, max=100_000, help="Workflows started at once per throughput run [500]."),
    ] = None,
    quick: QuickOption = False,
    json_path: JsonOption = None,
    redis_url: RedisUrlOption = None,
) -> None:
    """A 3-step chain and a 3-way fan-out + join: codeforge (embedded, Redis) vs Celery, Temporal, Hatchet."""
    from codeforge.benchmarks.workflow_bench import WorkflowBenchConfig

    names = _engines(systems)
    cfg = WorkflowBenchConfig.quick(names) if quick else WorkflowBenchConfig(systems=names)
    if samples is not None:
        cfg.samples = samples
    if workflows is not None:
        cfg.workflows = workflows
    command = shlex.join(["codeforge", *sys.argv[1:]])
    raise typer.Exit(_run_workflow(cfg, json_path, redis_url, command))


def _run_workflow(cfg: object, json_path: Path | None, redis_url: str | None, command: str) -> int:
    import dataclasses

    from codeforge.benchmarks import report, workflow_report
    from codeforge.benchmarks.workflow_bench import WorkflowBenchConfig, WorkflowRunner

    assert isinstance(cfg, WorkflowBenchConfig)
    err = Console(stderr=True, highlight=False)
    with _benchmark_redis(err, redis_url) as found:
        if found is None:
            return 2
        url, machine, _ = found
        # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so every engine's stop() ends its workers and
        # servers: they run in sessions of their own and would outlive a killed harness.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with tempfile.TemporaryDirectory(prefix="codeforge-wfbench-") as logdir:
            runner = WorkflowRunner(
                cfg, url, Path(logdir), progress=lambda line: err.print(line, markup=False)
            )
            # the machine is shared: how busy it was says how far the figures are from a quiet machine's
            machine["load_average_1m_start"] = round(os.getloadavg()[0], 1)
            rows = _on_product_loop(runner.run)
            machine["load_average_1m_end"] = round(os.getloadavg()[0], 1)
        workflow_report.print_table(rows, machine, Console(width=None if sys.stdout.isatty() else 170))
        if json_path is not None:
            settings = dataclasses.asdict(cfg)
            report.write_json(json_path, report.document(machine, command, rows, settings))
            err.print(f"wrote {json_path}")
        return 0
