"""`codeforge operator`: run the operator, the same as `kopf run -m codeforge.controller`, configured from the
environment the Helm chart sets (flags win over variables):

- CODEFORGE_WATCH_NAMESPACES: comma-separated namespaces to watch (globs like `team-*` allowed); empty or
  unset: the whole cluster
- CODEFORGE_LOG_FORMAT: full (lines name their object, as `kopf run` logs), text (without it) or json;
  default full
- CODEFORGE_LIVENESS_ENDPOINT: the liveness probe URL; default http://0.0.0.0:8080/healthz ("off": none)
- CODEFORGE_EVENT_LOOP: uvloop (default) or asyncio (`codeforge.event_loop`)
- CODEFORGE_QUEUE_URL, CODEFORGE_LEADER_ELECTION, ...: read by `codeforge.controller.config` and `.leader`

With leader election on, a standby serves the liveness endpoint itself until it leads (then Kopf does).
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Final

import typer

DEFAULT_LIVENESS: Final = "http://0.0.0.0:8080/healthz"
LOG_FORMATS: Final = ("text", "json", "full")


def watched_namespaces(raw: str) -> list[str]:
    """Namespaces from a comma-separated list; [] means the whole cluster."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def operator_command(
    namespaces: Annotated[
        str,
        typer.Option(
            "--namespaces",
            "-n",
            envvar="CODEFORGE_WATCH_NAMESPACES",
            help="Comma-separated namespaces to watch; empty: the whole cluster.",
        ),
    ] = "",
    log_format: Annotated[
        str, typer.Option("--log-format", envvar="CODEFORGE_LOG_FORMAT", help="full, text or json.")
    ] = "full",
    liveness: Annotated[
        str,
        typer.Option(
            "--liveness", envvar="CODEFORGE_LIVENESS_ENDPOINT", help="Liveness probe URL, or 'off'."
        ),
    ] = DEFAULT_LIVENESS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log Kopf's handling too.")] = False,
) -> None:
    """Run the CodeForge operator (AgentPool and Workflow controllers) against the current cluster."""
    import kopf

    from codeforge import event_loop

    try:
        loop_factory = event_loop.choose()
    except event_loop.EventLoopError as exc:
        raise typer.BadParameter(str(exc), param_hint=event_loop.ENV) from None
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"{log_format!r}: use one of {', '.join(LOG_FORMATS)}", param_hint="--log-format"
        )
    formats = {"text": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}
    kopf.configure(verbose=verbose, log_format=formats[log_format])

    endpoint = None if liveness.strip().lower() in ("", "off") else liveness.strip()
    # A standby serves the same endpoint until it leads (`leader.liveness_endpoint` reads it).
    os.environ["CODEFORGE_LIVENESS_ENDPOINT"] = endpoint or "off"

    import codeforge.controller  # noqa: F401  (registers every handler in Kopf's default registry)

    watched = watched_namespaces(namespaces)
    with asyncio.Runner(loop_factory=loop_factory) as runner:  # closed as asyncio.run closes its loop
        kopf.run(
            clusterwide=not watched, namespaces=watched, liveness_endpoint=endpoint, loop=runner.get_loop()
        )
