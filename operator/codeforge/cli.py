"""`codeforge`: the command line. Subcommands live beside the code they drive and are registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="codeforge",
    help="CodeForge: run multi-agent software-development Workflows, locally or on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Each subcommand group is imported lazily so `codeforge --help` stays fast.
    from codeforge.benchmarks.cli import app as bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: queue latency and throughput against peers.")

    from codeforge.api.crd_cli import crds_command

    app.command("crds")(crds_command)

    from codeforge.embedded.command import run_command

    app.command("run")(run_command)

    from codeforge.controller.command import operator_command

    app.command("operator")(operator_command)

    from codeforge.cli_approve import approve_command, reject_command

    app.command("approve")(approve_command)
    app.command("reject")(reject_command)


def main() -> None:
    _register()
    app()
