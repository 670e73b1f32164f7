"""Celery canvas under `codeforge bench workflow`: `chain(a, b, c)` and `chord([f, f, f], join)`, with the
Redis broker and the Redis result backend (a chord needs one) on the shared redis-server, at the documented
defaults: one worker with the prefork pool, one child per CPU. The client waits with `AsyncResult.get()`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import celery
from celery import Celery, chain, chord

from codeforge.benchmarks.system import WorkerGroup, cpu_count
from codeforge.benchmarks.workflow_engine import Unavailable, WorkflowEngine

ENV_URL = "CODEFORGE_BENCH_REDIS_URL"
ENV_QUEUE = "CODEFORGE_BENCH_QUEUE"
READY_TIMEOUT_S = 60.0
T = TypeVar("T")
RESULT_TIMEOUT_S = 60.0

_url = os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0")
app = Celery("codeforge_wfbench", broker=_url, backend=_url)
# The one change from defaults: a queue private to this run, so runs never see each other's tasks.
app.conf.task_default_queue = os.environ.get(ENV_QUEUE, "celery")
app.conf.worker_hijack_root_logger = False


@app.task(name="cfwfbench.step")  # type: ignore[untyped-decorator]
def step(value: Any) -> Any:
    return value


def signature(shape: str) -> Any:
    if shape == "chain":
        return chain(step.s({"n": 1}), step.s(), step.s())
    return chord([step.s({"n": 1}) for _ in range(3)], step.s())


class CeleryCanvas(WorkflowEngine):
    name = "celery"
    label = "Celery canvas"

    def version(self) -> str:
        return str(celery.__version__)

    def describe(self) -> str:
        return f"1 worker, --pool prefork -c {cpu_count()}; Redis broker and result backend"

    async def start(self) -> None:
        queue = f"cfwfbench-{self.ctx.run_id}"
        app.conf.broker_url = self.ctx.url
        app.conf.result_backend = self.ctx.url
        app.conf.task_default_queue = queue
        argv = ["-m", "celery", "-A", __name__, "worker", "--pool", "prefork", "-c", str(cpu_count())]
        argv += ["--loglevel", "WARNING", "-n", f"cfwfbench-{self.ctx.run_id}@%h"]
        env = {**os.environ, ENV_URL: self.ctx.url, ENV_QUEUE: queue, "PYTHONUNBUFFERED": "1"}
        self._workers = WorkerGroup([argv], env, self.ctx.logdir, self.name)
        self._workers.start()
        # Every client call runs on this one thread: Celery's app.backend (and its result consumer, one
        # pub/sub connection) is per thread.
        self._client = ThreadPoolExecutor(1, thread_name_prefix="celery-client")
        # An AsyncResult's __del__ unsubscribes on the result consumer's pub/sub; when the cyclic GC collects
        # one while the client is inside another UNSUBSCRIBE, the pub/sub's lock (not reentrant) deadlocks
        # it (about one run in four here). The GC stays off while Celery runs; stop() collects.
        gc.disable()
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = await self._call(step.delay, {"ready": True})
        # ready() reads the result key; get(timeout=...) before the worker is up sometimes leaves the
        # result consumer's pub/sub blocked in a read (its next get() then never returns)
        while not await self._call(pending.ready):
            self._workers.check_alive()
            if time.monotonic() > deadline:
                raise Unavailable(f"the Celery worker ran no task in {READY_TIMEOUT_S:g}s")
            await asyncio.sleep(0.1)
        await self._call(pending.get, timeout=10)  # opens the result consumer on a finished task

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._client, partial(fn, *args, **kwargs))

    async def stop(self) -> None:
        await asyncio.to_thread(self._workers.stop)
        if hasattr(self, "_client"):
            await self._call(self._close_results)
            self._client.shutdown()
        app.close()

    @staticmethod
    def _close_results() -> None:
        # Close the result consumer's pub/sub first: results collected later (some at exit, after the
        # harness stopped redis-server) would each retry reconnecting to unsubscribe, for minutes.
        consumer = app.backend.result_consumer
        consumer.stop()
        consumer._pubsub = None
        gc.enable()
        gc.collect()

    async def run(self, shape: str, workflow_id: str) -> None:
        await self._call(self._run_sync, shape)

    @staticmethod
    def _run_sync(shape: str) -> None:
        signature(shape).apply_async().get(timeout=RESULT_TIMEOUT_S)

    async def run_many(self, shape: str, workflow_ids: list[str]) -> None:
        # The Celery way to run many: send them all, then wait for each result (a thread per wait would
        # measure the thread pool, not Celery).
        def send_and_wait() -> None:
            results = [signature(shape).apply_async() for _ in workflow_ids]
            for result in results:
                result.get(timeout=RESULT_TIMEOUT_S)

        await self._call(send_and_wait)
