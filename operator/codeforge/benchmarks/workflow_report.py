"""`codeforge bench workflow` output: a rich table (machine facts and the JSON document: report.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from codeforge.benchmarks.workflow_bench import WorkflowRow


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: Sequence[WorkflowRow], machine: dict[str, Any]) -> Table:
    cpu = f"{machine['cpu_count']} CPU ({machine['cpu_model']})"
    title = f"Workflow benchmark: {cpu}, Python {machine['python']}, Redis {machine['redis_version']}"
    out = Table(title=title, title_justify="left")
    for col, justify in [
        ("system", "left"),
        ("version", "left"),
        ("workflow", "left"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("p99 ms", "right"),
        ("workflows/s", "right"),
        ("notes", "left"),
    ]:
        out.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in sorted(rows, key=lambda r: r.shape, reverse=False):
        out.add_row(
            row.label,
            row.version,
            f"{row.shape} ({row.steps} steps)",
            _ms(row.p50_ms),
            _ms(row.p95_ms),
            _ms(row.p99_ms),
            "-" if row.workflows_per_s is None else f"{row.workflows_per_s:,.1f}",
            row.notes,
        )
    return out


def print_table(rows: Sequence[WorkflowRow], machine: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(table(rows, machine))
