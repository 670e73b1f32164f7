"""`codeforge` (and `kubectl codeforge`): the command line. One module per command group; each is imported
when the command line is built, so `codeforge --help` stays fast.

- `run`, `operator`, `crds`, `bench`: beside the code they drive (embedded, controller, api, benchmarks);
- `list`, `get`, `watch`, `logs`, `submit`, `retry`, `suspend`, `resume`: Workflows on a cluster;
- `pools`, `dlq ...`: AgentPools and their dead letters.
"""

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
    if app.registered_commands:
        return  # already built (tests call this more than once)
    from codeforge.benchmarks.cli import app as bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: queue latency and throughput against peers.")

    from codeforge.api.crd_cli import crds_command

    app.command("crds")(crds_command)

    from codeforge.embedded.command import run_command

    app.command("run")(run_command)

    from codeforge.controller.command import operator_command

    app.command("operator")(operator_command)

    from codeforge.cli import logs, pools, workflows

    workflows.register(app)
    app.command("logs")(logs.logs_command)
    pools.register(app)


def main() -> None:
    _register()
    app()


def kubectl_main() -> None:
    """`kubectl codeforge ...`: kubectl runs `kubectl-codeforge` from PATH with the remaining arguments."""
    _register()
    app(prog_name="kubectl codeforge")
