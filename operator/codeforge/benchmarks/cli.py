"""`codeforge bench ...` subcommands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _bench() -> None:
    """Benchmarks: queue latency and throughput against peers."""
