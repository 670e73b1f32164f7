"""Celery with its Redis broker (kombu), at the documented defaults: prefork pool, acks on receipt,
prefetch multiplier 4, no result backend. Hundreds of consumers use the `threads` pool."""

from __future__ import annotations

import os
import time

import celery
from celery import Celery

from codeforge.benchmarks.recorder import ENV_QUEUE, ENV_URL, record_start
from codeforge.benchmarks.system import System, split_consumers

#: Up to this many consumers run as prefork processes (Celery's default pool); more use `--pool threads`.
MAX_PREFORK = 16

app = Celery("codeforge_bench", broker=os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"))
# The one change from defaults: a queue name private to this run, so runs never see each other's tasks.
app.conf.task_default_queue = os.environ.get(ENV_QUEUE, "celery")
app.conf.worker_hijack_root_logger = False


@app.task(name="cfbench.handle")  # type: ignore[untyped-decorator]
def handle(seq: int, sent_ns: int) -> None:
    record_start(seq, sent_ns)


class CeleryPeer(System):
    name = "celery"

    def version(self) -> str:
        return str(celery.__version__)

    def _layout(self, consumers: int) -> tuple[int, str, int]:
        if consumers <= MAX_PREFORK:
            return 1, "prefork", consumers
        procs, per = split_consumers(consumers)
        return procs, "threads", per

    def describe(self, consumers: int) -> str:
        procs, pool, per = self._layout(consumers)
        return f"{procs} worker(s) x --pool {pool} -c {per}"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        procs, pool, per = self._layout(consumers)
        argv = [
            "-m",
            "celery",
            "-A",
            __name__,
            "worker",
            "--pool",
            pool,
            "-c",
            str(per),
            "--loglevel",
            "WARNING",
        ]
        # Distinct node names, or Celery warns about duplicates when several workers share a host.
        return [[*argv, "-n", f"cfbench{i}@%h"] for i in range(procs)]

    async def open(self) -> None:
        app.conf.broker_url = self.ctx.url
        app.conf.task_default_queue = self.ctx.queue

    async def close(self) -> None:
        app.close()

    async def send(self, seq: int) -> None:
        handle.apply_async((seq, time.time_ns()))
