"""The cyclic garbage collector of a process that runs Workflows, set once per process: the operator when it
has started (`controller/services.start`, so `kopf run -m codeforge.controller` and `codeforge operator` both
get it) and `codeforge run` before its run (`embedded/command`).

With thousands of Workflows running, Python's default collector (a young collection every 700 net
allocations, a full one whenever a quarter more objects survived) kept walking the live runs' objects and the
start-up's: a third of the CPU of starting runs (bench/README, "Operator scale"). Two settings:

- `gc.freeze()` after start-up: what the imports and Kopf's set-up made (modules, classes, the kubernetes
  client, LangGraph, pydantic: most of an idle operator's objects) lives as long as the process, so it moves
  to the permanent generation, which no collection walks again;
- the operator's `GC_THRESHOLDS` instead of Python's (700, 10, 10): a young collection every 20,000 net
  allocations, a middle one after every second young one, a full one about every 6 million. A run's
  short-lived objects (a step's event, its task's JSON, LangGraph's per-superstep state) mostly die by
  reference count before a young collection, so while runs only go on (steps end, runs resume and park)
  collections stay rare; at 5,000 they did not (a task's end -> its run woken went from 9 to 29-33 ms at p99
  at 10,000). While thousands of runs start, each one's state is walked once young and once in the middle
  generation whatever the thresholds, but a pause is as long as what it walks, and every step ready in it
  waits it out: s4-s15's (50,000, 10, 10) held the loop 64-76 ms per young collection and 0.2-0.8 s per middle
  one while 10,000 Workflows started (bench/README, "The collector's thresholds"). Generation 0 counts net
  allocations, so a young generation also holds an object for each older one freed meanwhile: collections walk
  more than the thresholds say.

`codeforge run` freezes the same way but keeps s4-s15's thresholds, `RUN_GC_THRESHOLDS`: its runs
are short and start together, and with `GC_THRESHOLDS` it ran 3-16 % fewer workflows per second with 500 at
once on Redis (three rounds, bench/README, "The collector's thresholds"); with (50,000, 10, 10) instead of
Python's defaults it had run 1.4-1.6x as many ("The collector in `codeforge run`").

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
#: (young, middle, full): net allocations of container objects between young collections, young collections
#: between middle ones, middle ones between full ones. Python's: (700, 10, 10). A full collection comes after
#: about 20,001 x 2 x 151 = 6.0 million net allocations, as with s4-s15's (50,000, 10, 10).
GC_THRESHOLDS: Final = (20_000, 1, 150)
#: `codeforge run`'s thresholds (and the benchmark harness's, which runs codeforge as `codeforge run` does).
RUN_GC_THRESHOLDS: Final = (50_000, 10, 10)
Thresholds = tuple[int, int, int]
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


def tune_gc(env: Mapping[str, str] | None = None, thresholds: Thresholds = GC_THRESHOLDS) -> bool:
    """Freeze what start-up made and set `thresholds` (not with
    CODEFORGE_GC_TUNING=off), and measure the collections' pauses; once per process (tests start several
    operators in one process). False when nothing was changed."""
    global _tuned
    if _tuned:
        return False
    _tuned = True
    gc.callbacks.append(_time_collection)
    if (os.environ if env is None else env).get(TUNING_ENV, "").strip().lower() == "off":
        return False
    _apply(thresholds)
    return True


@contextlib.contextmanager
def gc_tuned(thresholds: Thresholds = RUN_GC_THRESHOLDS) -> Iterator[None]:
    """`tune_gc`'s settings for a block, Python's own put back after it: `codeforge bench workflow` runs
    codeforge in its harness process as `codeforge run` runs it, and the peers' clients after it as they
    come."""
    before = gc.get_threshold()
    _apply(thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _apply(thresholds: Thresholds) -> None:
    gc.collect()  # start-up's garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*thresholds)
