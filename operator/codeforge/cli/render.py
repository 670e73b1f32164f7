"""Output as kubectl prints it: aligned columns with upper-case headers, ages like 5m or 2d3h, and
`-o json|yaml` for scripts (the objects as the API server returns them)."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import typer
import yaml


class Output(enum.StrEnum):
    TABLE = ""
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, three spaces apart (kubectl's layout)."""
    cells = [[str(h).upper() for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-" if value is None else ""
    return " ".join(str(value).split())


def dump(value: Any, output: Output) -> str:
    if output is Output.JSON:
        return json.dumps(value, indent=2, default=str)
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip()


def emit(value: Any, output: Output) -> None:
    typer.echo(dump(value, output))


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (as the status writes it) to Unix time."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def span(seconds: float | None) -> str:
    """kubectl's human durations: 45s, 5m12s, 3h4m, 2d3h."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def age(timestamp: str | float | None, now: float | None = None) -> str:
    at = parse_time(timestamp) if isinstance(timestamp, str) else timestamp
    return "-" if at is None else span((now or time.time()) - at)


def between(start: str | None, end: str | None, now: float | None = None) -> str:
    """How long something ran: start to end, or to now while it runs."""
    began = parse_time(start)
    if began is None:
        return "-"
    finished = parse_time(end)
    return span((finished if finished is not None else (now or time.time())) - began)


def clip(text: Any, limit: int) -> str:
    one = " ".join(str(text or "").split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def summary(value: Any, limit: int = 60) -> str:
    """A result in one short line: strings as they are, anything else as compact JSON."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return clip(text, limit)
