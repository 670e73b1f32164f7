"""Options every cluster command takes, spelled as kubectl does (-n, -A, -o, --kubeconfig, --context)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from codeforge.cli.kube import Kube, Target


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
