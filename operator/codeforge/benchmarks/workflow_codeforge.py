"""codeforge under `codeforge bench workflow`, deployed as `codeforge run` deploys it (its collector tuned as
`codeforge run` tunes it, while codeforge runs).

- `codeforge-embedded`: the memory queue, LangGraph's in-memory checkpointer and an in-process `echo` agent,
  all in the harness's event loop (`codeforge run WORKFLOW.yaml`);
- `codeforge-redis`: the Redis queue and Redis checkpointer on the shared redis-server, the orchestrator in
  the harness process and the `echo` agent in its own `codeforge-agent` process
  (`codeforge run --queue redis://...`; in a cluster the operator takes the harness's place).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from typing import Any

from codeforge.api.task import Task
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.benchmarks.system import WorkerGroup
from codeforge.benchmarks.workflow_engine import EngineContext, Unavailable, WorkflowEngine, package_version
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import open_checkpointer
from codeforge.orchestrator.gc_tuning import gc_tuned
from codeforge.queue import TaskQueue, open_queue
from codeforge_agent import AgentConfig, HandlerConfig
from codeforge_agent.loop import run_agent

#: The agent's concurrency: enough for every step of the throughput runs' workflows to be in flight.
AGENT_CONCURRENCY = 64
#: Single-task round trips for the overhead probe (after 50 warm-up ones).
PROBE_SAMPLES = 300
READY_TIMEOUT_S = 60.0


def specs(pool: str) -> dict[str, WorkflowSpec]:
    chain = {
        "input": {"n": 1},
        "steps": [{"name": n, "pool": pool, "input": "state.input"} for n in ("a", "b", "c")],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    }
    fanout = {
        "input": {"n": 1},
        "steps": [
            {"name": "fan", "pool": pool, "input": "state.input", "parallel": 3},
            {"name": "join", "pool": pool, "input": "state.results"},
        ],
        "edges": [{"from": "fan", "to": "join"}],
    }
    return {"chain": parse_workflow_spec(chain), "fanout": parse_workflow_spec(fanout)}


class _Codeforge(WorkflowEngine):
    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        self.pool = f"wfbench-{ctx.run_id}"
        self.specs = specs(self.pool)
        self._queue: TaskQueue | None = None
        self._runner: WorkflowRunner | None = None
        self._collector = contextlib.ExitStack()

    def _started(self) -> None:
        """Set up: the harness's collector from here on as `codeforge run` sets its process's (tuned after
        start-up, `orchestrator/gc_tuning.py`); Python's own is back at `stop`, for the next engine."""
        self._collector.enter_context(gc_tuned())

    def version(self) -> str:
        return package_version("codeforge")

    async def run(self, shape: str, workflow_id: str) -> None:
        assert self._runner is not None
        outcome = await self._runner.run(workflow_id, self.specs[shape])
        if outcome.status != "succeeded":
            raise RuntimeError(f"codeforge workflow {workflow_id} {outcome.status}: {outcome.error}")

    async def overhead_probe(self) -> dict[str, float]:
        """The queue round trip a step costs without the orchestrator (enqueue -> agent -> result seen), to
        tell the orchestrator's own per-step overhead apart."""
        assert self._queue is not None
        queue, samples = self._queue, []
        for i in range(50 + PROBE_SAMPLES):
            tid = f"probe-{self.ctx.run_id}-{i}"
            started = time.perf_counter()
            await queue.enqueue(Task(id=tid, pool=self.pool, payload={"n": 1}))
            await queue.wait_result(self.pool, tid, 10)
            if i >= 50:
                samples.append(time.perf_counter() - started)
        return {"queue_round_trip_p50_ms": round(statistics.median(samples) * 1000, 3)}


class CodeforgeEmbedded(_Codeforge):
    name = "codeforge-embedded"
    label = "codeforge (embedded)"

    def describe(self) -> str:
        agent = f"echo agent (concurrency {AGENT_CONCURRENCY})"
        return f"one process: memory queue, in-memory checkpoints, {agent}"

    async def start(self) -> None:
        self._queue = await open_queue("memory://")
        self._runner = WorkflowRunner(self._queue, None)
        # as `codeforge run` runs an in-process pool (codeforge.embedded.agents, a sibling layer)
        config = AgentConfig(
            pool=self.pool,
            queue_url="memory://",
            concurrency=AGENT_CONCURRENCY,
            handler=HandlerConfig(kind="echo"),
            health_port=None,
            claim_wait=0.2,
        )
        self._stop = asyncio.Event()
        self._agent = asyncio.create_task(run_agent(self._queue, config, self._stop))
        self._started()

    async def stop(self) -> None:
        self._collector.close()
        self._stop.set()
        await self._agent
        if self._queue is not None:
            await self._queue.close()


class CodeforgeRedis(_Codeforge):
    name = "codeforge-redis"
    label = "codeforge (Redis)"

    def describe(self) -> str:
        return (
            "orchestrator in the harness, Redis queue + Redis checkpoints, "
            f"1 codeforge-agent process (echo, concurrency {AGENT_CONCURRENCY})"
        )

    async def start(self) -> None:
        self._queue = await open_queue(self.ctx.url)
        self._saver: Any = await open_checkpointer(self.ctx.url, prefix=f"wfbench:{self.ctx.run_id}")
        self._runner = WorkflowRunner(self._queue, self._saver)
        env = {  # the variables `codeforge run --queue redis://` and the operator give an agent
            "CODEFORGE_POOL": self.pool,
            "CODEFORGE_QUEUE_URL": self.ctx.url,
            "CODEFORGE_HANDLER": "echo",
            "CODEFORGE_CONCURRENCY": str(AGENT_CONCURRENCY),
            "CODEFORGE_HEALTH_PORT": "off",
            "CODEFORGE_LOG_LEVEL": "warning",
        }
        self._workers = WorkerGroup(
            [["-m", "codeforge_agent"]], {**os.environ, **env}, self.ctx.logdir, self.name
        )
        self._workers.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        probe = f"ready-{self.ctx.run_id}"
        await self._queue.enqueue(Task(id=probe, pool=self.pool, payload={}))
        while True:
            self._workers.check_alive()
            try:
                await self._queue.wait_result(self.pool, probe, 1)
                self._started()
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"the codeforge-agent ran no task in {READY_TIMEOUT_S:g}s") from None

    async def stop(self) -> None:
        self._collector.close()
        await asyncio.to_thread(self._workers.stop)
        await self._saver.aclose()
        if self._queue is not None:
            await self._queue.close()
