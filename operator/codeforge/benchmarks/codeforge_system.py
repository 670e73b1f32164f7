"""codeforge's own queue under the benchmark: the harness enqueues through `TaskQueue`, and worker
processes (`python -m codeforge.benchmarks.codeforge_system`) run consumers as asyncio tasks that claim,
run a no-op handler and complete, like agents do. The full lease protocol is kept: every task is claimed
under a lease with a fencing token and completed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import ClassVar

from codeforge import event_loop
from codeforge.api.task import Task
from codeforge.benchmarks.durable_server import DurableServer
from codeforge.benchmarks.recorder import ENV_QUEUE, ENV_URL, recorder
from codeforge.benchmarks.system import System, split_consumers
from codeforge.queue import Lease, TaskQueue, open_queue

#: Tasks per `enqueue_many` call when sending a burst.
BURST_CHUNK = 500
#: Leases per `claim_many` in throughput runs (latency runs claim one task at a time, as agents do).
CLAIM_BATCH = 64


class CodeforgeSystem(System):
    name = "codeforge"
    #: None: the queue's default (fast) on the server as the harness started it (no AOF, like the peers)
    durability: ClassVar[str | None] = None

    def version(self) -> str:
        try:
            return dist_version("codeforge")
        except PackageNotFoundError:
            return "dev"

    def describe(self, consumers: int) -> str:
        procs, per = split_consumers(consumers)
        batching = f"throughput: claim_many({CLAIM_BATCH})/complete_many"
        return f"{procs} process(es) x {per} asyncio consumers; {batching}"

    def worker_commands(self, consumers: int, *, throughput: bool = False) -> list[list[str]]:
        procs, per = split_consumers(consumers)
        batch = CLAIM_BATCH if throughput else 1
        argv = ["-m", "codeforge.benchmarks.codeforge_system", "--consumers", str(per), "--batch", str(batch)]
        if self.durability:
            argv += ["--durability", self.durability]
        return [argv for _ in range(procs)]

    async def open(self) -> None:
        self._queue: TaskQueue = await open_queue(self.ctx.url, durability=self.durability)

    async def close(self) -> None:
        await self._queue.close()

    async def send(self, seq: int) -> None:
        sent = time.time_ns()  # before building the Task: validation is part of the enqueue cost
        await self._queue.enqueue(Task(id=f"t{seq}", pool=self.ctx.queue, payload={"i": seq, "t": sent}))

    async def send_many(self, seqs: range) -> None:
        for start in range(seqs.start, seqs.stop, BURST_CHUNK):
            sent = time.time_ns()
            tasks = [
                Task(id=f"t{seq}", pool=self.ctx.queue, payload={"i": seq, "t": sent})
                for seq in range(start, min(start + BURST_CHUNK, seqs.stop))
            ]
            await self._queue.enqueue_many(tasks)


class CodeforgeFast(DurableServer, CodeforgeSystem):
    name = "codeforge-fast"
    durability = "fast"
    appendfsync = "everysec"


class CodeforgeFsync(DurableServer, CodeforgeSystem):
    name = "codeforge-fsync"
    durability = "fsync"


class CodeforgeReplicated(DurableServer, CodeforgeSystem):
    name = "codeforge-replicated"
    durability = "replicated"


async def _consume(queue: TaskQueue, pool: str, name: str, batch: int) -> None:
    rec = recorder()
    while True:
        leases: list[Lease]
        if batch == 1:
            lease = await queue.claim(pool, name, timeout=None)
            leases = [lease] if lease is not None else []
        else:
            leases = await queue.claim_many(pool, name, batch, timeout=None)
        # The handler is a no-op: "starting" it is the moment its payload is in hand.
        starts = [(lease.task.payload, time.time_ns()) for lease in leases]
        if len(leases) == 1:
            await queue.complete(leases[0], None)
        elif leases:
            await queue.complete_many([(lease, None) for lease in leases])
        done = time.time_ns()
        for payload, start in starts:
            rec.record(int(payload["i"]), int(payload["t"]), start, done)


async def _main(consumers: int, batch: int, durability: str | None) -> None:
    url, pool = os.environ[ENV_URL], os.environ[ENV_QUEUE]
    queue = await open_queue(url, durability=durability)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    prefix = f"bench-{os.getpid()}"
    tasks = [asyncio.create_task(_consume(queue, pool, f"{prefix}-{i}", batch)) for i in range(consumers)]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiter, *tasks]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await queue.close()
    errors = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if errors:
        raise errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description="codeforge benchmark consumers")
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--durability", default=None)
    args = parser.parse_args()
    event_loop.run(_main(args.consumers, args.batch, args.durability), event_loop.choose())  # as the agent


if __name__ == "__main__":
    main()
