"""Dramatiq with its RedisBroker at the documented defaults (default middleware, prefetch, idle backoff).
Consumers are Dramatiq worker threads (`--threads`); hundreds are spread over one process per CPU."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from codeforge.benchmarks.recorder import ENV_QUEUE, ENV_URL, record_start
from codeforge.benchmarks.system import System, split_consumers

broker = RedisBroker(  # type: ignore[no-untyped-call]
    url=os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0")
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ.get(ENV_QUEUE, "default").replace(":", "-"))
def handle(seq: int, sent_ns: int) -> None:
    record_start(seq, sent_ns)


class DramatiqPeer(System):
    name = "dramatiq"

    def version(self) -> str:
        return str(dramatiq.__version__)

    def describe(self, consumers: int) -> str:
        procs, per = split_consumers(consumers)
        return f"--processes {procs} --threads {per}"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        procs, per = split_consumers(consumers)
        return [
            ["-m", "dramatiq", __name__, "--processes", str(procs), "--threads", str(per), "--skip-logging"]
        ]

    async def send(self, seq: int) -> None:
        handle.send(seq, time.time_ns())
