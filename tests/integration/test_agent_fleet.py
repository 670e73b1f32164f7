"""50 real agent processes on one pool drain 5,000 tasks: every task runs once, none twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from codeforge.api.task import Task, TaskState
from codeforge.queue import open_queue
from support.agent_procs import agent_env, running_agents

pytestmark = [pytest.mark.redis, pytest.mark.slow]
AGENTS = 50
TASKS = 5000


@pytest.mark.timeout(600)
async def test_fifty_agents_drain_five_thousand_tasks_exactly_once(redis_url: str, tmp_path: Path) -> None:
    pool = f"fleet-{uuid.uuid4().hex[:8]}"
    journal = tmp_path / "journal.txt"
    env = agent_env(pool, redis_url, handler="python", python_function="support.agent_funcs:journal")
    env["AGENT_TEST_JOURNAL"] = str(journal)
    queue = await open_queue(redis_url)
    try:
        async with running_agents(env, AGENTS, ready_timeout=240) as agents:
            ids = [f"job-{i}" for i in range(TASKS)]
            started = time.monotonic()
            for chunk in range(0, TASKS, 500):
                assert all(
                    await queue.enqueue_many(
                        [Task(id=i, pool=pool, payload={}) for i in ids[chunk : chunk + 500]]
                    )
                )
            outcomes = await asyncio.gather(*(queue.wait_result(pool, i, timeout=300) for i in ids))
            elapsed = time.monotonic() - started
            assert all(agent.alive for agent in agents)
            stats = await queue.stats(pool)
    finally:
        await queue.close()
    assert {o.state for o in outcomes} == {TaskState.SUCCEEDED}
    assert {o.attempts for o in outcomes} == {1}
    runs = Counter(line.split()[0] for line in journal.read_text().splitlines())
    assert set(runs) == set(ids), "every task ran"
    assert max(runs.values()) == 1, f"ran twice: {[i for i, n in runs.items() if n > 1][:10]}"
    # Work spread over the fleet (not one agent doing everything while 49 idle).
    workers = Counter(line.split()[1] for line in journal.read_text().splitlines())
    assert len(workers) >= AGENTS // 2, f"only {len(workers)} of {AGENTS} agents got work"
    assert (stats.queued, stats.in_flight, stats.dead) == (0, 0, 0)
    print(f"\n{TASKS} tasks through {AGENTS} agents in {elapsed:.1f}s ({TASKS / elapsed:,.0f} tasks/s)")
