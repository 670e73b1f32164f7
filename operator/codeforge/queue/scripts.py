"""The queue's Lua scripts, kept as versioned `.lua` files beside this module; `lib.lua` is prepended."""

from __future__ import annotations

from functools import cache
from importlib import resources

SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "complete",
    "heartbeat",
    "fail",
    "release",
    "cancel",
    "reap",
    "stats",
    "requeue_dead",
    "consumers",
)


@cache
def script_source(name: str) -> str:
    folder = resources.files("codeforge.queue") / "lua"
    return (folder / "lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()
