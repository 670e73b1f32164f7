"""Worker-side timing records, shared by every benchmarked system.

A handler stamps `time.time_ns()` when it starts (and when the task is done, as far as the worker can tell)
and hands the record to a `Recorder`. A background thread ships records to a Redis list in batches, so
recording costs the handler a list append, not a round trip; the harness reads that list. Wall-clock
nanoseconds are comparable across the harness and worker processes because they share one host clock.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import redis

#: Environment variables through which the harness configures worker processes it launches.
ENV_URL = "CODEFORGE_BENCH_REDIS_URL"
ENV_RECORD_KEY = "CODEFORGE_BENCH_RECORD_KEY"
ENV_QUEUE = "CODEFORGE_BENCH_QUEUE"
ENV_CONSUMERS = "CODEFORGE_BENCH_CONSUMERS"


@dataclass(frozen=True, slots=True)
class Record:
    """One task as one worker saw it: sequence number, producer stamp, handler start, done (ns)."""

    seq: int
    sent_ns: int
    start_ns: int
    done_ns: int

    def encode(self) -> str:
        return f"{self.seq},{self.sent_ns},{self.start_ns},{self.done_ns}"

    @classmethod
    def decode_batch(cls, blob: bytes | str) -> list[Record]:
        text = blob.decode() if isinstance(blob, bytes) else blob
        out = []
        for item in text.split(";"):
            if item:
                seq, sent, start, done = item.split(",")
                out.append(cls(int(seq), int(sent), int(start), int(done)))
        return out


class Recorder:
    """Batches records to a Redis list from a daemon thread (or synchronously, for fork-per-task workers)."""

    def __init__(self, url: str, key: str, *, synchronous: bool = False) -> None:
        self._client = redis.Redis.from_url(url)
        self._key = key
        self._synchronous = synchronous
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        if not synchronous:
            threading.Thread(target=self._flush_loop, name="bench-recorder", daemon=True).start()

    def record(self, seq: int, sent_ns: int, start_ns: int, done_ns: int | None = None) -> None:
        item = Record(seq, sent_ns, start_ns, done_ns if done_ns is not None else time.time_ns()).encode()
        if self._synchronous:
            self._client.rpush(self._key, item)
            return
        with self._lock:
            self._pending.append(item)
        self._wake.set()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self._client.rpush(self._key, ";".join(batch))
            # A short pause lets a busy worker accumulate a batch: one push per ~1 ms, not per task.
            time.sleep(0.001)


_recorders: dict[int, Recorder] = {}


def recorder(*, synchronous: bool = False) -> Recorder:
    """The recorder of this process, made on first use (after any fork, so prefork children get their own)."""
    pid = os.getpid()
    rec = _recorders.get(pid)
    if rec is None:
        rec = _recorders[pid] = Recorder(
            os.environ[ENV_URL], os.environ[ENV_RECORD_KEY], synchronous=synchronous
        )
    return rec


def record_start(seq: int, sent_ns: int, *, synchronous: bool = False) -> None:
    """What a peer's handler calls first: stamp the start, record it."""
    start = time.time_ns()
    recorder(synchronous=synchronous).record(seq, sent_ns, start, start)
