"""The worker process of `codeforge.api.cel_sandbox`: evaluates one CEL expression at a time, read from stdin
and answered on stdout (`multiprocessing.connection` frames, pickled).

Run as `python -m codeforge.api.cel_worker MEMORY_BYTES RESULT_BYTES`. It imports nothing of codeforge but
this module, so it starts in about a third of a second. Its address space is capped at MEMORY_BYTES: a
comprehension that fills memory ends in a MemoryError (answered) or the evaluator's abort (the parent sees
the worker die); under a container limit below that, its OOM score makes it the one the kernel kills.
Replies: ("ok", value), ("error", exception class name, args) or ("limit", message).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import sys
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cel


@lru_cache(maxsize=256)
def _compiled(expression: str) -> Any:
    # The parent compiled it first (behind codeforge.api.cel_check's size check), so this cannot crash.
    return cel.compile(expression)


def _answer(expression: str, variables: dict[str, Any], result_bytes: int) -> bytes:
    try:
        value = _compiled(expression).execute(variables)
        reply = pickle.dumps(("ok", value))
    except MemoryError:
        return pickle.dumps(("limit", "the evaluation ran out of memory"))
    except Exception as exc:
        args = tuple(a if isinstance(a, str | int | float) else str(a) for a in exc.args)
        return pickle.dumps(("error", type(exc).__name__, args))
    if len(reply) > result_bytes:
        why = f"its value is {len(reply):,} bytes, over the limit of {result_bytes:,}"
        return pickle.dumps(("limit", why))
    return reply


def main() -> None:
    memory, result_bytes = int(sys.argv[1]), int(sys.argv[2])
    # The protocol owns the process's stdin and stdout; a stray print goes to stderr instead.
    reader = Connection(os.dup(0), writable=False)
    writer = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # In a container whose memory limit is below the address-space cap (the chart gives the operator 256
    # MiB), the cgroup's OOM killer picks a process: this one first, never the operator beside it.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    while True:
        try:
            expression, variables = reader.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        writer.send_bytes(_answer(expression, variables, result_bytes))


if __name__ == "__main__":
    main()
