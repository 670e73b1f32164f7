"""arq at its documented defaults: an asyncio worker polling its queue every `poll_delay` (0.5 s).
Consumers are concurrent jobs (`max_jobs`); hundreds are spread over one process per CPU."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import arq
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from codeforge.benchmarks.recorder import ENV_CONSUMERS, ENV_QUEUE, ENV_URL, record_start
from codeforge.benchmarks.system import System, split_consumers

#: Concurrent enqueue_job calls when sending a burst (one connection pool, as an asyncio app would).
BURST_CONCURRENCY = 100


async def handle(ctx: dict[str, Any], seq: int, sent_ns: int) -> None:
    record_start(seq, sent_ns)


class WorkerSettings:
    functions = [handle]
    redis_settings = RedisSettings.from_dsn(os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"))
    queue_name = os.environ.get(ENV_QUEUE, "arq:queue")
    max_jobs = int(os.environ.get(ENV_CONSUMERS, "10"))


class ArqPeer(System):
    name = "arq"

    def version(self) -> str:
        return str(arq.VERSION)

    def describe(self, consumers: int) -> str:
        procs, per = split_consumers(consumers)
        return f"{procs} worker(s) x max_jobs={per}, poll_delay=0.5 s (default)"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        procs, _ = split_consumers(consumers)
        return [["-m", "arq", f"{__name__}.WorkerSettings"] for _ in range(procs)]

    def env(self, consumers: int) -> dict[str, str]:
        return {**super().env(consumers), "CODEFORGE_BENCH_CONSUMERS": str(split_consumers(consumers)[1])}

    async def open(self) -> None:
        self._pool: ArqRedis = await create_pool(
            RedisSettings.from_dsn(self.ctx.url), default_queue_name=self.ctx.queue
        )

    async def close(self) -> None:
        await self._pool.aclose()

    async def send(self, seq: int) -> None:
        await self._pool.enqueue_job("handle", seq, time.time_ns())

    async def send_many(self, seqs: range) -> None:
        for start in range(seqs.start, seqs.stop, BURST_CONCURRENCY):
            chunk = range(start, min(start + BURST_CONCURRENCY, seqs.stop))
            await asyncio.gather(*(self._pool.enqueue_job("handle", seq, time.time_ns()) for seq in chunk))
