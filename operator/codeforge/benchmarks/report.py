"""Benchmark output: the machine it ran on, a rich table, and the JSON document."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import redis
from rich.console import Console
from rich.table import Table

from codeforge.benchmarks.queue_bench import Row
from codeforge.benchmarks.system import cpu_count


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def machine_info(redis_url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        server: dict[str, Any] = client.info("server")  # type: ignore[assignment]
    finally:
        client.close()
    return {
        "cpu_count": cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "redis_version": server.get("redis_version"),
        "redis_py": redis.__version__,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class _Result(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


def document(
    machine: dict[str, Any], command: str, rows: Sequence[_Result], settings: dict[str, Any]
) -> dict[str, Any]:
    return {
        "machine": machine,
        "command": command,
        "settings": settings,
        "results": [row.as_dict() for row in rows],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: Sequence[Row], machine: dict[str, Any]) -> Table:
    title = (
        f"Queue benchmark: {machine['cpu_count']} CPU ({machine['cpu_model']}), Python {machine['python']}, "
        f"Redis {machine['redis_version']}"
    )
    out = Table(title=title, title_justify="left")
    for col, justify in [
        ("system", "left"),
        ("version", "left"),
        ("scenario", "left"),
        ("consumers", "right"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("p99 ms", "right"),
        ("p99 / floor", "right"),
        ("tasks/s", "right"),
        ("tasks", "right"),
        ("notes", "left"),
    ]:
        out.add_column(col, justify=justify)  # type: ignore[arg-type]
    order = {"latency": 0, "idle-wakeup": 1, "throughput": 2}
    for row in sorted(rows, key=lambda r: (order.get(r.scenario, 9), r.consumers)):
        out.add_row(
            row.system,
            row.version,
            row.scenario,
            str(row.consumers),
            _ms(row.p50_ms),
            _ms(row.p95_ms),
            _ms(row.p99_ms),
            "" if row.p99_vs_floor is None else f"{row.p99_vs_floor:.2f}x",
            "-" if row.throughput_per_s is None else f"{row.throughput_per_s:,.0f}",
            str(row.tasks),
            row.notes,
        )
    return out


def print_table(rows: Sequence[Row], machine: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(table(rows, machine))
