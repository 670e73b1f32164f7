"""Durability modes under the benchmark: the private redis-server's AOF (and a replica) set for a run."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import redis

from codeforge.benchmarks.system import BenchContext, System
from codeforge.testing.redis_server import LocalRedis, start_replica_of


class DurableServer(System):
    """A system in one durability mode (a mixin, before the system's class): for the run, the private
    server's AOF is set as the chart sets it for the mode (and `replicated` gets a replica with the same
    settings); afterwards it is put back."""

    durability: ClassVar[str | None] = "fsync"
    appendfsync: ClassVar[str] = "always"

    def __init__(self, ctx: BenchContext) -> None:
        super().__init__(ctx)
        self._saved: dict[str, str] = {}
        self._replica: LocalRedis | None = None

    def describe(self, consumers: int) -> str:
        replica = " + 1 replica (WAIT 1)" if self.durability == "replicated" else ""
        # A mixin: the concrete system's describe follows it in the MRO.
        base = super().describe(consumers)  # type: ignore[safe-super]
        return f"{base}; AOF appendfsync {self.appendfsync}{replica}"

    async def open(self) -> None:
        if not self.ctx.owns_server:
            raise RuntimeError(
                f"{self.name} sets the server's appendfsync for its run: drop --redis-url so the benchmark "
                "starts its own redis-server"
            )
        await asyncio.to_thread(self._configure)
        await super().open()

    def _configure(self) -> None:
        client: Any = redis.Redis.from_url(self.ctx.url, decode_responses=True)
        try:
            saved = client.config_get("append*")
            self._saved = {k: saved[k] for k in ("appendonly", "appendfsync")}
            client.config_set("appendfsync", self.appendfsync)
            client.config_set("appendonly", "yes")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # turning the AOF on rewrites it in the background first
                info = client.info("persistence")
                busy = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
                if info.get("aof_enabled") and not busy:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("the AOF rewrite did not finish within 60s")
        finally:
            client.close()
        # A system measured in turns with its floor (queue_bench.run_pair) shares the floor's replica.
        if self.durability == "replicated" and not _has_replica(self.ctx.url):
            port = urlsplit(self.ctx.url).port or 6379
            self._replica = start_replica_of(port, None, True, self.appendfsync)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await asyncio.to_thread(self._restore)

    def _restore(self) -> None:
        if self._replica is not None:
            self._replica.stop()
            self._replica = None
        if self._saved:
            client = redis.Redis.from_url(self.ctx.url, decode_responses=True)
            try:
                client.config_set("appendonly", self._saved["appendonly"])
                client.config_set("appendfsync", self._saved["appendfsync"])
            finally:
                client.close()


def _has_replica(url: str) -> bool:
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    try:
        return int(client.info("replication").get("connected_slaves", 0)) > 0
    finally:
        client.close()
