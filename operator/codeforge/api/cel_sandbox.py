"""CEL evaluation in a worker process, for expressions whose cost the data decides.

The `cel` package's evaluator has no cost limit, cannot be interrupted and holds the GIL (a thread does not
help). A comprehension over a Workflow's own data, `xs.exists(x, xs.exists(y, x == y))` over an input of
100,000 items, is 10^10 steps: it would stop the operator's event loop, and every run on it, for hours; `map`
can fill memory. Expressions that `cel_check.data_driven` flags (a comprehension, many concatenations) are
evaluated here instead: by one long-lived worker process (`codeforge.api.cel_worker`, started on first
use) under an address-space limit, waited for by a dedicated thread under a wall-clock limit
(`limits.CEL_SANDBOX_*`).
A worker that overruns is killed and the next evaluation starts another. Everything else stays in process
(~40 us, linear in the data and the expression).

Evaluations queue on the one thread: they take milliseconds, and one that overruns delays the others by at
most the time limit. A round trip costs about 0.1-0.3 ms plus pickling the variables the expression names.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from codeforge.api.limits import CEL_SANDBOX_MEMORY, CEL_SANDBOX_RESULT_BYTES, CEL_SANDBOX_SECONDS

#: Where `codeforge` is imported from, so the worker finds the same code without an install.
_ROOT = str(Path(__file__).resolve().parents[2])


class EvaluationLimit(Exception):
    """The evaluation overran its time, memory or result limit and was stopped: not a value, not false."""


class _Worker:
    """One worker process and the pipes to it; used from one thread at a time."""

    def __init__(self, seconds: float, memory: int, result_bytes: int) -> None:
        self.seconds, self.memory, self.result_bytes = seconds, memory, result_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._to: Connection | None = None
        self._from: Connection | None = None
        self.started = 0  # processes started (tests read it)

    def _start(self) -> tuple[Connection, Connection]:
        to_read, to_write = os.pipe()
        from_read, from_write = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "codeforge.api.cel_worker", str(self.memory), str(self.result_bytes)],
                stdin=to_read,
                stdout=from_write,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(to_read)
            os.close(from_write)
        self._to = Connection(to_write, readable=False)
        self._from = Connection(from_read, writable=False)
        self.started += 1
        return self._to, self._from

    def stop(self) -> int | None:
        """Kill the worker (if any) and return its exit status (negative: the signal that ended it)."""
        proc, self._proc = self._proc, None
        for conn in (self._to, self._from):
            if conn is not None:
                conn.close()
        self._to = self._from = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def evaluate(self, expression: str, variables: dict[str, Any]) -> Any:
        request = pickle.dumps((expression, variables))
        if self._to is None or self._from is None or self._proc is None or self._proc.poll() is not None:
            self.stop()  # never started, stopped, or ended while idle (killed from outside)
            try:
                to, from_ = self._start()
            except OSError as exc:  # no process to be had (fork refused, interpreter gone): not a value
                raise EvaluationLimit(f"the CEL worker process could not start: {exc}") from None
        else:
            to, from_ = self._to, self._from
        try:
            to.send_bytes(request)
            if not from_.poll(self.seconds):
                self.stop()
                raise EvaluationLimit(f"it ran longer than {self.seconds:g} s and was stopped")
            reply = pickle.loads(from_.recv_bytes())
        except (EOFError, OSError):
            status = self.stop()
            raise EvaluationLimit(
                f"the evaluation ran out of memory ({self.memory // 2**20} MiB) or crashed (exit status "
                f"{status}) and was stopped"
            ) from None
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "limit":
            raise EvaluationLimit(reply[1])
        raise _exception(reply[1], reply[2])


def _exception(name: str, args: tuple[Any, ...]) -> Exception:
    """The worker's exception rebuilt: the builtin class of that name (KeyError, TypeError, ...), else a
    RuntimeError, so callers catch the same errors as from an evaluation in process."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(*args)
    return RuntimeError(*args)


_worker = _Worker(CEL_SANDBOX_SECONDS, CEL_SANDBOX_MEMORY, CEL_SANDBOX_RESULT_BYTES)
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cel-sandbox")
_lock = threading.Lock()  # the executor has one thread; the lock also covers direct calls (tests, stop)
atexit.register(lambda: _worker.stop())


def evaluate_blocking(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate in the worker, waiting in this thread (not on an event loop: call `evaluate` there)."""
    with _lock:
        return _worker.evaluate(expression, variables)


async def evaluate(expression: str, variables: dict[str, Any], names: frozenset[str]) -> Any:
    """The expression's value from the worker; `names` are the variables it reads (only those are sent).
    Raises what an evaluation in process raises, or EvaluationLimit."""
    used = {k: v for k, v in variables.items() if k in names}
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, evaluate_blocking, expression, used)


def worker_starts() -> int:
    """How many worker processes this process has started (a killed worker is replaced on next use)."""
    return _worker.started
