"""One log line per event, as text for people or JSON (`--log-format json`) for log pipelines.

Task events carry `task_id`, `workflow`, `step` (and pool, attempt, agent) as fields, so a pipeline can
follow one task or one Workflow across many agent pods.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

#: Record attributes that are ours (set through `extra`), printed after the message.
CONTEXT_FIELDS = (
    "event",
    "pool",
    "role",
    "agent",
    "task_id",
    "workflow",
    "step",
    "attempt",
    "duration_ms",
    "error",
)
LOGGER_NAME = "codeforge_agent"


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """Like LoggerAdapter, but a call's own `extra` is merged over the bound one instead of replacing it."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs

    def bind(self, **fields: Any) -> ContextAdapter:
        return ContextAdapter(self.logger, {**(self.extra or {}), **fields})


def get_logger(**fields: Any) -> ContextAdapter:
    return ContextAdapter(logging.getLogger(LOGGER_NAME), fields)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) not in (None, "")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: Mapping[str, Any] = _context(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items())


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Send the agent's logs to stderr (the container log) in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries stay quiet unless something is wrong
    logging.getLogger(LOGGER_NAME).setLevel(level)
    logging.getLogger("codeforge.workspace").setLevel(level)  # the Git cache's fetches and evictions
