"""`codeforge crds`: write the CRDs rendered from the models, or check that a directory matches them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from codeforge.api import crd


def crds_command(
    out: Annotated[Path, typer.Option("--out", help="Directory of the CRD YAML files.")] = Path("crds"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 with a diff when the directory drifts.")
    ] = False,
) -> None:
    """Render the CustomResourceDefinitions from the pydantic models (crds/ and the chart's copy)."""
    if check:
        drift = crd.check(out)
        if drift:
            typer.echo(drift.report(), nl=False)
            typer.echo(
                f"{out}: {len(drift.diffs)} CRD file(s) differ from the models; "
                f"run `codeforge crds --out {out}`",
                err=True,
            )
            raise typer.Exit(code=1)
        typer.echo(f"{out}: CRDs match the models")
        return
    for path in crd.write(out):
        typer.echo(f"wrote {path}")
