"""RQ at its documented defaults: one `rq worker` process per consumer, forking a work horse per job.
RQ has no thread or async concurrency, so hundreds of consumers would be hundreds of processes."""

from __future__ import annotations

import time

import rq
from redis import Redis
from rq import Queue

from codeforge.benchmarks.recorder import record_start
from codeforge.benchmarks.system import System

#: More `rq worker` processes than this do not fit on a small benchmark machine.
MAX_WORKERS = 8
#: Jobs per pipelined `enqueue_many` call.
BURST_CHUNK = 500


def handle(seq: int, sent_ns: int) -> None:
    # The work horse exits right after the job, so the record is pushed before returning.
    record_start(seq, sent_ns, synchronous=True)


class RqPeer(System):
    name = "rq"

    def version(self) -> str:
        return str(rq.__version__)

    def unsupported(self, consumers: int) -> str | None:
        if consumers > MAX_WORKERS:
            return (
                f"RQ runs one process per consumer (no thread/async concurrency); {consumers} worker "
                f"processes do not fit on {_cpus()} CPUs"
            )
        return None

    def describe(self, consumers: int) -> str:
        return f"{consumers} x `rq worker` (fork per job)"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        argv = ["-m", "rq.cli", "worker", "--url", self.ctx.url, "--quiet", self.ctx.queue]
        return [argv for _ in range(consumers)]

    async def open(self) -> None:
        self._queue = Queue(self.ctx.queue, connection=Redis.from_url(self.ctx.url))

    async def close(self) -> None:
        self._queue.connection.close()

    async def send(self, seq: int) -> None:
        self._queue.enqueue(handle, seq, time.time_ns())

    async def send_many(self, seqs: range) -> None:
        for start in range(seqs.start, seqs.stop, BURST_CHUNK):
            sent = time.time_ns()
            jobs = [
                Queue.prepare_data(handle, (seq, sent))
                for seq in range(start, min(start + BURST_CHUNK, seqs.stop))
            ]
            self._queue.enqueue_many(jobs)


def _cpus() -> int:
    from codeforge.benchmarks.system import cpu_count

    return cpu_count()
