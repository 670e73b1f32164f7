"""The claim loop in-process on the memory queue (the orchestrator's embedded mode uses it this way)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from codeforge.api.limits import MAX_RESULT_BYTES
from codeforge.api.task import Task, TaskState
from codeforge.queue import TaskQueue, open_queue
from codeforge_agent import (
    Agent,
    AgentConfig,
    HandlerConfig,
    PythonHandler,
    TaskContext,
    TaskTiming,
    run_agent,
)
from codeforge_agent.handlers import Handler

POOL = "loop"


@asynccontextmanager
async def agent_running(
    handler: Handler | None = None, kind: str = "echo", **settings: Any
) -> AsyncIterator[tuple[TaskQueue, Agent, list[TaskTiming]]]:
    queue = await open_queue("memory://")
    timings: list[TaskTiming] = []
    config = AgentConfig(
        pool=POOL, handler=HandlerConfig(kind=kind), claim_wait=0.05, reap_interval=0.05, **settings
    )
    agent = Agent(queue, config, handler, on_task_done=timings.append)
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    try:
        yield queue, agent, timings
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
        await queue.close()


def task(task_id: str, payload: Any = None, **fields: Any) -> Task:
    return Task(id=task_id, pool=POOL, payload=payload, **fields)


def sleeper(seconds: float, started: asyncio.Event | None = None) -> Callable[[Task], Any]:
    async def run(t: Task) -> Any:
        if started is not None:
            started.set()
        await asyncio.sleep(seconds)
        return {"done": t.id}

    return run


async def test_runs_up_to_concurrency_tasks_at_once() -> None:
    async with agent_running(kind="sleep", concurrency=3) as (queue, _, timings):
        await queue.enqueue_many([task(f"c{i}", {"seconds": 0.3}) for i in range(6)])
        started = time.monotonic()
        outcomes = [await queue.wait_result(POOL, f"c{i}", timeout=10) for i in range(6)]
        elapsed = time.monotonic() - started
    assert all(o.state is TaskState.SUCCEEDED for o in outcomes)
    assert 0.6 <= elapsed < 1.2, elapsed  # two waves of three, not six in a row nor six at once
    first_wave = sorted(timings, key=lambda t: t.started)[:3]
    assert max(t.started for t in first_wave) < min(t.finished for t in first_wave)


async def test_deadline_cancels_the_handler_and_fails_permanently() -> None:
    async with agent_running(kind="sleep") as (queue, _, _):
        await queue.enqueue(task("d1", {"seconds": 30}, deadline=time.time() + 0.3))
        outcome = await queue.wait_result(POOL, "d1", timeout=10)
    assert outcome.state is TaskState.FAILED
    assert outcome.error is not None
    assert "timed out after 0.3s (task deadline)" in outcome.error


async def test_task_timeout_is_retried_until_attempts_run_out() -> None:
    async with agent_running(kind="sleep", task_timeout=0.1) as (queue, _, _):
        await queue.enqueue(task("t1", {"seconds": 30}, max_attempts=2))
        outcome = await queue.wait_result(POOL, "t1", timeout=10)
    assert outcome.state is TaskState.DEAD
    assert outcome.attempts == 2
    assert outcome.error is not None
    assert "--task-timeout" in outcome.error


async def test_unexpected_exception_is_retryable_and_names_the_error() -> None:
    async with agent_running(PythonHandler("support.agent_funcs:boom")) as (queue, agent, _):
        await queue.enqueue(task("x1", {}, max_attempts=2))
        outcome = await queue.wait_result(POOL, "x1", timeout=10)
        assert agent.connected
    assert outcome.state is TaskState.DEAD
    assert outcome.attempts == 2
    assert outcome.error is not None
    assert outcome.error.startswith("python handler raised RuntimeError: model exploded")


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ({1, 2}, "the result is not JSON"),
        ({"diff": "x" * (MAX_RESULT_BYTES + 1)}, "bytes of JSON, over the limit of 524,288"),
        (json.loads("[" * 100 + "]" * 100), "nests more than 64 levels deep"),
    ],
    ids=["set", "large", "deep"],
)
async def test_a_result_the_queue_refuses_fails_the_task_saying_why(result: Any, why: str) -> None:
    class Bad:
        kind = "custom"

        async def __call__(self, t: Task, context: TaskContext) -> Any:
            return result

        async def aclose(self) -> None:
            return None

    async with agent_running(Bad()) as (queue, _, _):
        await queue.enqueue(task("j1"))
        outcome = await queue.wait_result(POOL, "j1", timeout=10)
    assert outcome.state is TaskState.FAILED
    assert outcome.error is not None
    assert outcome.error.startswith("custom handler returned a result the queue refuses: ")
    assert why in outcome.error


async def test_cancelled_task_stops_the_handler_and_records_nothing() -> None:
    cancelled, started = asyncio.Event(), asyncio.Event()

    async def slow(t: Task) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with agent_running(PythonHandler(slow), lease_seconds=0.3) as (queue, _, timings):
        await queue.enqueue(task("k1"))  # the agent's 0.3 s lease: a heartbeat every 0.1 s
        await asyncio.wait_for(started.wait(), 5)
        assert await queue.cancel(POOL, "k1", reason="user changed their mind")
        await asyncio.wait_for(cancelled.wait(), 5)
        outcome = await queue.wait_result(POOL, "k1", timeout=5)
        assert await eventually(lambda: asyncio.sleep(0, [t.outcome for t in timings]), ["lease_lost"])
    assert outcome.state is TaskState.CANCELLED


async def test_stop_lets_in_flight_tasks_finish_within_grace() -> None:
    queue = await open_queue("memory://")
    config = AgentConfig(pool=POOL, claim_wait=0.05, grace_seconds=5)
    stop, started = asyncio.Event(), asyncio.Event()
    runner = asyncio.create_task(run_agent(queue, config, stop, PythonHandler(sleeper(0.3, started))))
    await queue.enqueue(task("g1"))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    await queue.enqueue(task("g2"))  # after the stop: must stay queued for another agent
    await asyncio.wait_for(runner, 10)
    assert (await queue.get(POOL, "g1")).state is TaskState.SUCCEEDED  # type: ignore[union-attr]
    assert (await queue.get(POOL, "g2")).state is TaskState.QUEUED  # type: ignore[union-attr]


async def test_stop_past_grace_hands_the_task_back_for_retry() -> None:
    started = asyncio.Event()
    async with agent_running(PythonHandler(sleeper(30, started)), grace_seconds=0.2) as (queue, _, _):
        await queue.enqueue(task("h1"))
        await asyncio.wait_for(started.wait(), 5)
    outcome = await queue.get(POOL, "h1")
    assert outcome is not None
    assert outcome.state is TaskState.QUEUED
    assert outcome.error is not None
    assert "shut down before the task finished" in outcome.error


async def test_records_busy_then_idle() -> None:
    gate = asyncio.Event()

    async def wait_gate(t: Task) -> Any:
        await gate.wait()
        return None

    async with agent_running(PythonHandler(wait_gate), state_ttl=0.3) as (queue, agent, _):
        await queue.enqueue(task("b1"))
        assert await eventually(lambda: queue.consumer_states(POOL), {agent.agent_id: "busy"})
        gate.set()
        assert await eventually(lambda: queue.consumer_states(POOL), {agent.agent_id: "idle"})


async def eventually(probe: Callable[[], Any], expected: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe() == expected:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_several_embedded_agents_share_one_config_and_one_loop() -> None:
    queue = await open_queue("memory://")
    config = AgentConfig(pool=POOL, agent_id="embedded", claim_wait=0.05, handler=HandlerConfig(kind="sleep"))
    stop = asyncio.Event()
    agents = [Agent(queue, config) for _ in range(3)]
    runners = [asyncio.create_task(a.run(stop)) for a in agents]
    try:
        await queue.enqueue_many([task(f"e{i}", {"seconds": 0.3}) for i in range(3)])
        outcomes = [await queue.wait_result(POOL, f"e{i}", timeout=10) for i in range(3)]
        states = await queue.consumer_states(POOL)
    finally:
        stop.set()
        await asyncio.gather(*runners)
    assert [a.agent_id for a in agents] == ["embedded", "embedded-2", "embedded-3"]
    assert set(states) == {"embedded", "embedded-2", "embedded-3"}
    assert {o.state for o in outcomes} == {TaskState.SUCCEEDED}
