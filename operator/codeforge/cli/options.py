"""Options every cluster command takes, spelled as kubectl does (-n, -A, -o, --kubeconfig, --context)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from codeforge.cli import render
from codeforge.cli.kube import JSON, Kube, Target


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


Kubeconfig = Annotated[
    str | None,
    typer.Option("--kubeconfig", help="Path to the kubeconfig (default: $KUBECONFIG, ~/.kube/config)."),
]
Context = Annotated[str | None, typer.Option("--context", help="The kubeconfig context to use.")]
Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: the context's, else `default`).")
]
AllNamespaces = Annotated[bool, typer.Option("--all-namespaces", "-A", help="Objects of every namespace.")]
Output = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="table, wide, json or yaml.", case_sensitive=False)
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Kube:
    return Kube.connect(Target(kubeconfig=kubeconfig, context=context, namespace=namespace))


def shown_as_list(objs: list[JSON], output: OutputFormat, what: str, namespace: str | None) -> bool:
    """-o json|yaml prints a List (as kubectl does), and nothing found says so on stderr: True when done."""
    if output in (OutputFormat.JSON, OutputFormat.YAML):
        render.emit({"apiVersion": "v1", "kind": "List", "items": objs}, render.Output(output.value))
        return True
    if not objs:
        where = "any namespace" if namespace is None else f"namespace {namespace!r}"
        typer.echo(f"No {what} in {where}.", err=True)
        return True
    return False
