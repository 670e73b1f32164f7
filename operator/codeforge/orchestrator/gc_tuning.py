"""The cyclic garbage collector of a process that runs Workflows, set once per process: the operator when it
has started (`controller/services.start`, so `kopf run -m codeforge.controller` and `codeforge operator` both
get it) and `codeforge run` before its run (`embedded/command`).

With thousands of Workflows running, Python's default collector (a young collection every 700 net
allocations, a full one whenever a quarter more objects survived) kept walking the live runs' objects and the
start-up's: a third of the CPU of starting runs (bench/README, "Operator scale"). Two settings:

- `gc.freeze()` after start-up: what the imports and Kopf's set-up made (modules, classes, the kubernetes
  client, LangGraph, pydantic: most of an idle operator's objects) lives as long as the process, so it moves
  to the permanent generation, which no collection walks again;
- generation 0's threshold from 700 to `GEN0_THRESHOLD`: a run's short-lived objects (a step's event, its
  task's JSON, LangGraph's per-superstep state) mostly die by reference count within a step; with 700, many
  were still alive at a young collection, were promoted, and made the full collections come sooner. Garbage
  in cycles waits a little longer (at most that many objects, a few MiB).

`codeforge run` gains the same way: with 500 runs at once on Redis it ran 1.4-1.6x the workflows per
second with these settings (bench/README, "The collector in `codeforge run`").

`codeforge_operator_gc_pause_seconds{generation}` is how long each collection held the process (every
coroutine of the event loop waits it out): its sum is the collector's share of the time, its tail the pauses
a step's dispatch may sit through. CODEFORGE_GC_TUNING=off keeps Python's defaults (the pauses are still
measured): for comparing, or if these settings are ever suspected.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client import Histogram

TUNING_ENV: Final = "CODEFORGE_GC_TUNING"
#: Net allocations of container objects between young collections (CPython's default: 700).
GEN0_THRESHOLD: Final = 50_000
GC_PAUSE_SECONDS: Final = Histogram(
    "codeforge_operator_gc_pause_seconds",
    "Each run of Python's cyclic garbage collector (the process's event loop waits it out), by the "
    "generation collected.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

_started: list[float] = []  # when the collection in progress began (the callbacks run on one thread)
_tuned = False


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        GC_PAUSE_SECONDS.labels(generation=str(info["generation"])).observe(
            time.perf_counter() - _started.pop()
        )


def tune_gc(env: Mapping[str, str] | None = None) -> bool:
    """Freeze what start-up made and raise the young generation's threshold (not with
    CODEFORGE_GC_TUNING=off), and measure the collections' pauses; once per process (tests start several
    operators in one process). False when nothing was changed."""
    global _tuned
    if _tuned:
        return False
    _tuned = True
    gc.callbacks.append(_time_collection)
    if (os.environ if env is None else env).get(TUNING_ENV, "").strip().lower() == "off":
        return False
    _apply()
    return True


@contextlib.contextmanager
def gc_tuned() -> Iterator[None]:
    """`tune_gc`'s settings for a block, Python's own put back after it: `codeforge bench workflow` runs
    codeforge in its harness process as `codeforge run` runs it, and the peers' clients after it as they
    come."""
    before = gc.get_threshold()
    _apply()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _apply() -> None:
    gc.collect()  # start-up's garbage is freed, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
