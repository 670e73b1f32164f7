"""The event loop codeforge's long-running processes run on: uvloop, for the agent (`codeforge-agent`),
`codeforge run` and the operator (`codeforge operator`).

uvloop is libuv's loop, in C: its ready queue, selector and socket transports (what redis-py and aiohttp read
from) cost less than asyncio's Python. Measured against asyncio, alternating on one machine (bench/README,
"The collector's pauses, and uvloop" and "The operator on uvloop"): a task's handover to an agent 13 %
quicker at the median and the queue's throughput 7 % higher, `codeforge run` 15-38 % more chains per second,
and at 10,000 Workflows the operator's step dispatch p99, CPU and memory lower in 4 of 4 rounds.
`codeforge operator` ran on asyncio's loop from s12 (where its collector's middle-generation pauses were
longer on uvloop) until s16's thresholds ended those pauses. The image's entrypoint, `kopf run`, picks uvloop
itself whenever it is installed, and does not read the variable below.

CODEFORGE_EVENT_LOOP=asyncio (or =uvloop) overrides the default of any of them: for comparing, or if a loop is
ever suspected. `communicate` covers the one behaviour the two loops were found to differ in (a program that
exits without reading its stdin).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, TypeVar

import uvloop

ENV: Final = "CODEFORGE_EVENT_LOOP"
CHOICES: Final = ("uvloop", "asyncio")
DEFAULT: Final = "uvloop"

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopError(ValueError):
    """CODEFORGE_EVENT_LOOP names no loop this build has."""


def choose(env: Mapping[str, str] | None = None) -> LoopFactory | None:
    """The configured loop's factory (uvloop's when CODEFORGE_EVENT_LOOP is unset), or None for
    asyncio's own (asyncio.Runner's convention). Called before anything starts, so a wrong value is a
    configuration error, not a traceback."""
    raw = (os.environ if env is None else env).get(ENV, "")
    choice = raw.strip().lower() or DEFAULT
    if choice not in CHOICES:
        raise EventLoopError(f"{ENV}={raw!r}: use uvloop or asyncio (unset: {DEFAULT})")
    return uvloop.new_event_loop if choice == "uvloop" else None


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """asyncio.run(main) on the chosen loop (closing it cancels what is left and shuts down async generators
    and the default executor, as asyncio.run does)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def communicate(process: asyncio.subprocess.Process, data: bytes | None) -> tuple[bytes, bytes]:
    """`process.communicate(data)` for a program started with stdout and stderr piped, on either loop. A
    program may exit, or close its stdin, without reading all of `data`: asyncio's loop reports that as a
    broken pipe, which `communicate` ignores, but uvloop raises RuntimeError once the exited program's pipe is
    closed, which would hide the program's own exit code and stderr."""
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if data is None or stdin is None:
        return await process.communicate()
    if stdout is None or stderr is None:
        raise ValueError("communicate: start the program with stdout=PIPE and stderr=PIPE")

    async def feed() -> None:
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except RuntimeError:
            if not stdin.is_closing():  # only uvloop's "unable to perform operation on <...closed=True>"
                raise
        finally:
            stdin.close()

    _, out, err = await asyncio.gather(feed(), stdout.read(), stderr.read())
    await process.wait()
    return out, err
