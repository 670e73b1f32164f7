"""The agent's side of rate limits and usage, in-process: memory queue, memory limiter, a local HTTP server
for the openai handler (the fleet-wide behaviour on real Redis with agent processes is in
tests/integration/test_rate_limit_fleet.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from codeforge.api.task import Task, TaskState
from codeforge.api.usage import Usage, parse_usage, usage_of_result
from codeforge.queue import TaskQueue, open_queue
from codeforge.queue.ratelimit import MemoryRateLimiter, RateLimit
from codeforge_agent import Agent, AgentConfig, HandlerConfig, TaskContext, TaskTiming
from codeforge_agent.config import ConfigError
from codeforge_agent.handlers import Handler, HandlerError, OpenAIHandler, RateLimitedError
from codeforge_agent.handlers.http_post import retry_after
from support.agent_servers import ProviderLimits, ProviderLog, limited_openai, serve

POOL = "team-a/writer"
KEY = "openai/gpt-unit"


@asynccontextmanager
async def agent_running(
    handler: Handler, limiter: MemoryRateLimiter, **settings: Any
) -> AsyncIterator[tuple[TaskQueue, Agent, list[TaskTiming]]]:
    queue = await open_queue("memory://")
    timings: list[TaskTiming] = []
    config = AgentConfig(
        pool=POOL,
        handler=HandlerConfig(kind="echo"),
        claim_wait=0.05,
        reap_interval=0.05,
        rate_limit_key=KEY,
        **settings,
    )
    agent = Agent(queue, config, handler, on_task_done=timings.append, limiter=limiter)
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    try:
        yield queue, agent, timings
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
        await queue.close()


class Scripted:
    """A handler answering 429 for its first `refusals` calls, then a result with usage."""

    kind = "scripted"

    def __init__(self, refusals: int = 0, usage: Any = None) -> None:
        self.refusals = refusals
        self.usage = usage if usage is not None else {"input_tokens": 7, "output_tokens": 3, "cost": 0.01}
        self.calls: list[float] = []

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        self.calls.append(asyncio.get_running_loop().time())
        if len(self.calls) <= self.refusals:
            raise RateLimitedError("HTTP 429 on purpose", retry_after=0.4)
        return {"ok": task.id, "model": "gpt-unit", "usage": self.usage}

    async def aclose(self) -> None:
        return None


async def test_a_429_pauses_the_key_and_gives_the_task_back_without_spending_it() -> None:
    limiter = MemoryRateLimiter()
    handler = Scripted(refusals=1)
    async with agent_running(handler, limiter, rate_limit_rpm=6000) as (queue, agent, timings):
        await queue.enqueue(Task(id="t1", pool=POOL, max_attempts=1))
        outcome = await queue.wait_result(POOL, "t1", timeout=10)
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.attempts == 1  # the refused run was given back unstarted
    assert [t.outcome for t in timings] == ["rate_limited", "succeeded"]
    assert handler.calls[1] - handler.calls[0] >= 0.4  # Retry-After honoured before the second call
    m = agent.usage_metrics
    assert m.rate_limited.labels("team-a", "writer", KEY)._value.get() == 1
    assert m.tokens.labels("team-a", "writer", "gpt-unit", "in")._value.get() == 7
    assert m.cost.labels("team-a", "writer", "gpt-unit")._value.get() == pytest.approx(0.01)


async def test_tokens_of_finished_calls_are_charged_to_the_key() -> None:
    limiter = MemoryRateLimiter()
    limit = RateLimit(KEY, tokens_per_minute=60000)
    async with agent_running(Scripted(), limiter, rate_limit_tpm=60000) as (queue, _, _):
        await queue.enqueue(Task(id="t1", pool=POOL))
        await queue.wait_result(POOL, "t1", timeout=10)
        await asyncio.sleep(0.05)
    assert (await limiter.state(limit))["average"] == 10  # 7 in + 3 out


async def test_waiting_for_capacity_holds_no_claim() -> None:
    """At 60 rpm with one slot used, the next task stays queued (not in flight) until the slot frees."""
    limiter = MemoryRateLimiter()
    handler = Scripted()
    async with agent_running(handler, limiter, rate_limit_rpm=60) as (queue, agent, _):
        await queue.enqueue(Task(id="t1", pool=POOL))
        await queue.wait_result(POOL, "t1", timeout=10)
        await queue.enqueue(Task(id="t2", pool=POOL))
        await asyncio.sleep(0.3)
        stats = await queue.stats(POOL)
        assert stats.in_flight == 0
        assert stats.queued == 1
        outcome = await queue.wait_result(POOL, "t2", timeout=10)
    assert outcome.state is TaskState.SUCCEEDED
    assert handler.calls[1] - handler.calls[0] >= 0.9  # one request per second
    assert agent.gate is not None
    assert agent.gate.waited > 0.5


async def test_a_bad_usage_report_fails_the_task_naming_the_field() -> None:
    limiter = MemoryRateLimiter()
    handler = Scripted(usage={"input_tokens": -5})
    async with agent_running(handler, limiter, rate_limit_rpm=6000) as (queue, _, _):
        await queue.enqueue(Task(id="t1", pool=POOL, max_attempts=3))
        outcome = await queue.wait_result(POOL, "t1", timeout=10)
    assert outcome.state is TaskState.FAILED
    assert outcome.error is not None
    assert "usage.input_tokens must be between 0 and" in outcome.error


async def test_openai_handler_raises_rate_limited_with_retry_after_and_reports_cost() -> None:
    log = ProviderLog()
    limits = ProviderLimits(requests=1, window=5.0, retry_after=3)
    async with serve(limited_openai(limits, log)) as base:
        handler = OpenAIHandler(
            base_url=f"{base}/v1", model="m", api_key="sk-test", input_price=2.0, output_price=8.0
        )
        context = TaskContext(agent_id="a", attempt=1, timeout=5, log=None)  # type: ignore[arg-type]
        try:
            result = await handler(Task(id="x", pool=POOL, payload={"prompt": "abcdefgh"}), context)
            with pytest.raises(RateLimitedError) as info:
                await handler(Task(id="y", pool=POOL, payload={"prompt": "x"}), context)
        finally:
            await handler.aclose()
    # 8 characters: 2 prompt tokens; max_tokens default 10: (2 * 2 + 10 * 8) / 1e6
    assert result["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 10,
        "total_tokens": 12,
        "cost": pytest.approx(84e-6),
    }
    assert info.value.retry_after == 3
    assert "HTTP 429" in info.value.message


def test_retry_after_headers() -> None:
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"Retry-After": "7"}) == 7
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0  # date form: default used
    assert retry_after({"Retry-After": "1e12"}) == 600  # capped
    assert retry_after({"Retry-After": "nan"}) == 0


def test_usage_reports() -> None:
    assert parse_usage({"prompt_tokens": 3, "completion_tokens": 4}) == Usage(tokens_in=3, tokens_out=4)
    assert parse_usage({"total_tokens": 9}) == Usage(tokens_out=9)
    assert parse_usage({"input_tokens": 1, "cost": 0.5}) == Usage(tokens_in=1, cost=0.5)
    assert parse_usage(None) is None
    for bad, field in (
        ({"input_tokens": "many"}, "usage.input_tokens"),
        ({"output_tokens": 10**13}, "usage.output_tokens"),
        ({"cost": float("nan")}, "usage.cost"),
        ({"cost": True}, "usage.cost"),
        ([1, 2], "usage must be an object"),
    ):
        with pytest.raises(ValueError, match=field):
            parse_usage(bad)
    assert usage_of_result({"usage": {"cost": -1}}) is None  # the orchestrator never fails on a bad one
    assert usage_of_result("text") is None


def test_rate_limit_settings_are_checked() -> None:
    base = {"CODEFORGE_POOL": POOL, "CODEFORGE_QUEUE_URL": "memory://"}
    config = AgentConfig.from_sources(
        [], {**base, "CODEFORGE_RATE_LIMIT_KEY": KEY, "CODEFORGE_RATE_LIMIT_TPM": "90000"}
    )
    assert config.rate_limit == RateLimit(KEY, 0, 90000, 1.0)
    for env, message in (
        ({"CODEFORGE_RATE_LIMIT_RPM": "60"}, "need --rate-limit-key"),
        ({"CODEFORGE_RATE_LIMIT_KEY": KEY}, "neither requests nor tokens"),
        ({"CODEFORGE_RATE_LIMIT_KEY": "a{b}", "CODEFORGE_RATE_LIMIT_RPM": "1"}, "rate-limit key"),
        ({"CODEFORGE_RATE_LIMIT_KEY": KEY, "CODEFORGE_RATE_LIMIT_RPM": "-1"}, "from 0 to 10"),
        ({"CODEFORGE_OPENAI_INPUT_PRICE": "-2"}, "price >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            AgentConfig.from_sources([], {**base, **env})


async def test_handler_errors_other_than_429_still_fail() -> None:
    class Broken(Scripted):
        async def __call__(self, task: Task, context: TaskContext) -> Any:
            raise HandlerError("bad request", retryable=False)

    async with agent_running(Broken(), MemoryRateLimiter(), rate_limit_rpm=6000) as (queue, _, _):
        await queue.enqueue(Task(id="t1", pool=POOL))
        outcome = await queue.wait_result(POOL, "t1", timeout=10)
    assert outcome.state is TaskState.FAILED
