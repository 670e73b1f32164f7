"""The event loop every long-running codeforge process runs on: the operator (`codeforge operator`), the agent
(`codeforge-agent`) and `codeforge run`.

uvloop (libuv's loop, in C) by default: the operator's one loop carries every run's steps, the Kubernetes
watches and the Redis replies, and the loop's own machinery (its ready queue, the selector, the socket
transports redis-py and aiohttp read from) costs less in C than in asyncio's Python (bench/README, "uvloop").
Kopf's own `kopf run` picks uvloop the same way when it is installed.

CODEFORGE_EVENT_LOOP=asyncio keeps Python's own loop: for comparing, or if uvloop is ever suspected.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, TypeVar

import uvloop

ENV: Final = "CODEFORGE_EVENT_LOOP"
CHOICES: Final = ("uvloop", "asyncio")

T = TypeVar("T")


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopError(ValueError):
    """CODEFORGE_EVENT_LOOP names no loop this build has."""


def choose(env: Mapping[str, str] | None = None) -> LoopFactory | None:
    """The configured loop's factory: uvloop's, or None for asyncio's own (asyncio.Runner's convention).
    Called before anything starts, so a wrong value is a configuration error, not a traceback."""
    raw = (os.environ if env is None else env).get(ENV, "")
    choice = raw.strip().lower() or CHOICES[0]
    if choice not in CHOICES:
        raise EventLoopError(f"{ENV}={raw!r}: use one of {', '.join(CHOICES)} (default: {CHOICES[0]})")
    return uvloop.new_event_loop if choice == "uvloop" else None


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """asyncio.run(main) on the chosen loop (closing it cancels what is left and shuts down async generators
    and the default executor, as asyncio.run does)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
