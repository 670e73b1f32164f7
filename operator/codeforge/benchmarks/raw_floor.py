"""The floor: a bare LPUSH / BRPOP loop on the same Redis (no leases, no acks, no retries).

Run as a worker: `python -m codeforge.benchmarks.raw_floor --consumers N` (configured by the harness's
environment). Each consumer is an asyncio task blocking in BRPOP on its own connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from codeforge import event_loop
from codeforge.benchmarks.durable_server import DurableServer
from codeforge.benchmarks.recorder import ENV_QUEUE, ENV_URL, recorder
from codeforge.benchmarks.system import System, split_consumers
from codeforge.queue.redis_results import MAX_BLOCK_SECONDS

#: Values per LPUSH when sending a burst: pipelining is fair for the floor too.
BURST_CHUNK = 500
#: An idle consumer's BRPOP lasts as long as codeforge's idle wait: with `--confirm` each one that times out
#: also writes and WAITs, which with 500 consumers and 1 s was 500 fsynced writes a second of the floor's own.
IDLE_BLOCK_S = int(MAX_BLOCK_SECONDS)


class RawFloor(System):
    name = "raw"

    def version(self) -> str:
        return f"redis-py {redis.__version__}"

    def describe(self, consumers: int) -> str:
        procs, per = split_consumers(consumers)
        return f"{procs} process(es) x {per} asyncio BRPOP consumers"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        procs, per = split_consumers(consumers)
        return [["-m", "codeforge.benchmarks.raw_floor", "--consumers", str(per)] for _ in range(procs)]

    async def open(self) -> None:
        self._client = aioredis.Redis.from_url(self.ctx.url)

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, seq: int) -> None:
        sent = time.time_ns()
        await self._client.lpush(self.ctx.queue, f"{seq}:{sent}")

    async def send_many(self, seqs: range) -> None:
        for start in range(seqs.start, seqs.stop, BURST_CHUNK):
            chunk = range(start, min(start + BURST_CHUNK, seqs.stop))
            sent = time.time_ns()
            await self._client.lpush(self.ctx.queue, *(f"{seq}:{sent}" for seq in chunk))


class RawFsync(DurableServer, RawFloor):
    """The floor on the server as `durability=fsync` runs it (appendfsync always): LPUSH and BRPOP fsync."""

    name = "raw-fsync"
    durability = "fsync"


class RawReplicated(DurableServer, RawFloor):
    """The floor as `durability=replicated` runs it: AOF always, a replica, and each LPUSH acknowledged only
    after a WAIT for it (the consumer's BRPOP does not wait: the floor is the least a durable send costs)."""

    name = "raw-replicated"
    durability = "replicated"

    async def send(self, seq: int) -> None:
        sent = time.time_ns()
        pipe = self._client.pipeline(transaction=False)
        pipe.lpush(self.ctx.queue, f"{seq}:{sent}")
        pipe.execute_command("WAIT", 1, 1000)
        await pipe.execute()


class RawReplicatedConfirmed(RawReplicated):
    """`raw-replicated` whose consumer also starts only once a replica holds its pop: BRPOP, a write of its
    own and WAIT 1 in one pipeline, as codeforge's consumer pops a handed-over lease in `replicated` (so a
    failover cannot hand the same value to a second consumer). The like-for-like floor for that mode."""

    name = "raw-replicated-confirmed"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        return [[*argv, "--confirm"] for argv in super().worker_commands(consumers, throughput=throughput)]


async def _pop(client: aioredis.Redis, key: str, confirm: bool) -> Any:
    if not confirm:
        return await client.brpop([key], timeout=IDLE_BLOCK_S)  # type: ignore[misc]
    pipe = client.pipeline(transaction=False)
    pipe.brpop([key], timeout=IDLE_BLOCK_S)
    pipe.set(f"{key}:sync", "1")  # WAIT covers this connection's own writes: one after the pop
    pipe.execute_command("WAIT", 1, 1000)
    item, _, _ = await pipe.execute()
    return item


async def _consume(url: str, key: str, stop: asyncio.Event, confirm: bool) -> None:
    client = aioredis.Redis.from_url(url)
    rec = recorder()
    try:
        while not stop.is_set():
            item = await _pop(client, key, confirm)
            if item is None:
                continue
            start = time.time_ns()
            seq, sent = item[1].split(b":")
            rec.record(int(seq), int(sent), start)
    finally:
        await client.aclose()


async def _main(consumers: int, confirm: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    url, key = os.environ[ENV_URL], os.environ[ENV_QUEUE]
    tasks = [asyncio.create_task(_consume(url, key, stop, confirm)) for _ in range(consumers)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--confirm", action="store_true", help="WAIT for a replica after each pop")
    args = parser.parse_args()
    # the product's loop, as codeforge's workers run on
    event_loop.run(_main(args.consumers, args.confirm), event_loop.choose())


if __name__ == "__main__":
    main()
