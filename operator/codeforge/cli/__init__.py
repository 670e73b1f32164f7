"""`codeforge` (and `kubectl codeforge`): the command line. One module per command group; each is imported
when the command line is built, so `codeforge --help` stays fast.

- `run`, `operator`, `crds`, `bench`: beside the code they drive (embedded, controller, api, benchmarks);
- `list`, `get`, `watch`, `logs`, `submit`, `retry`, `suspend`, `resume`, `stop`, `terminate`, `approve`,
  `reject`: Workflows on a cluster;
- `pools`, `dlq ...`: AgentPools and their dead letters.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="codeforge",
    help="CodeForge: run multi-agent software-development Workflows, locally or on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    # A callback keeps `codeforge` a group of commands even when a call builds only one of them (Typer
    # would otherwise make a lone command the program itself).
    return None


def _bench() -> None:
    from codeforge.benchmarks.cli import app as bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: queue and workflow engines against peers.")


def _crds() -> None:
    from codeforge.api.crd_cli import crds_command

    app.command("crds")(crds_command)


def _run() -> None:
    from codeforge.embedded.command import run_command

    app.command("run")(run_command)


def _operator() -> None:
    from codeforge.controller.command import operator_command  # a bad setting exits there (exit 2)

    app.command("operator")(operator_command)


def _cluster() -> None:
    from codeforge.cli import approve, logs, pools, workflows

    workflows.register(app)
    approve.register(app)
    app.command("logs")(logs.logs_command)
    pools.register(app)


#: The command groups and the first words that name them. A call builds only its own group: importing the
#: operator (Kopf, LangGraph) takes seconds, and `codeforge list` should not wait for it.
GROUPS = {
    "bench": _bench,
    "crds": _crds,
    "run": _run,
    "operator": _operator,
    **dict.fromkeys(
        (
            "list",
            "get",
            "watch",
            "submit",
            "retry",
            "suspend",
            "resume",
            "stop",
            "terminate",
            "approve",
            "reject",
            "logs",
            "pools",
            "dlq",
        ),
        _cluster,
    ),
}


def _register(argv: list[str] | None = None) -> None:
    """Build the command line: every group, or only the one `argv`'s first word names."""
    if app.registered_commands or app.registered_groups:
        return  # already built (tests call this more than once)
    first = next((a for a in argv or [] if not a.startswith("-")), None)
    if first in GROUPS:
        GROUPS[first]()
        return
    for build in dict.fromkeys(GROUPS.values()):  # help, or a typo: all of them, in this order
        build()


def main() -> None:
    _register(sys.argv[1:])
    app()


def kubectl_main() -> None:
    """`kubectl codeforge ...`: kubectl runs `kubectl-codeforge` from PATH with the remaining arguments."""
    _register(sys.argv[1:])
    app(prog_name="kubectl codeforge")
