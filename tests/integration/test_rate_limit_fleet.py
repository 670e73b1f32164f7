"""A fleet of real `codeforge-agent` processes (two pools) sharing one rate-limit key on a real Redis, calling
a local OpenAI-compatible server that enforces its own limits and answers 429 + Retry-After.

What is measured is what the provider saw: requests and tokens per window, and silence after each 429.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from codeforge.api.task import Task, TaskOutcome, TaskState
from codeforge.queue import TaskQueue, open_queue
from support.agent_procs import AgentProcess, agent_env, running_agents
from support.agent_servers import ProviderLimits, ProviderLog, limited_openai, serve

pytestmark = [pytest.mark.redis, pytest.mark.slow]
#: Every call: a 4-character prompt (1 token) and max_tokens 9, so 10 tokens (support.agent_servers).
CALL_TOKENS = 10


@asynccontextmanager
async def fleet(
    queue_url: str,
    base_url: str,
    key: str,
    *,
    rpm: int,
    tpm: int,
    agents_per_pool: int = 3,
) -> AsyncIterator[tuple[list[str], list[AgentProcess]]]:
    """Two pools, `agents_per_pool` agent processes each (concurrency 2), all naming one rate-limit key."""
    pools = [f"team-{c}-{uuid.uuid4().hex[:6]}/writer" for c in "ab"]
    procs: list[AgentProcess] = []
    async with AsyncExitStack() as stack:
        for i, pool in enumerate(pools):
            env = agent_env(
                pool,
                queue_url,
                handler="openai",
                openai_base_url=f"{base_url}/v1",
                openai_model="gpt-fake",
                openai_api_key=f"sk-{i}",
                openai_input_price="2",
                openai_output_price="8",
                concurrency="2",
                rate_limit_key=key,
                rate_limit_rpm=str(rpm),
                rate_limit_tpm=str(tpm),
                rate_limit_burst_seconds="1",
                claim_wait="0.5",
            )
            procs += await stack.enter_async_context(running_agents(env, agents_per_pool))
        yield pools, procs


async def run_tasks(queue: TaskQueue, pools: list[str], count: int) -> list[TaskOutcome]:
    tasks = [
        Task(id=f"t{i}", pool=pools[i % 2], payload={"prompt": "four", "max_tokens": 9}, max_attempts=1)
        for i in range(count)
    ]
    for task in tasks:
        await queue.enqueue(task)
    return list(await asyncio.gather(*(queue.wait_result(t.pool, t.id, timeout=120) for t in tasks)))


def max_in_window(times: list[tuple[float, int]], window: float) -> tuple[int, int]:
    """The most requests, and the most tokens, the provider saw in any `window` seconds."""
    most_requests = most_tokens = 0
    for start, _ in times:
        inside = [tokens for t, tokens in times if start <= t < start + window]
        most_requests = max(most_requests, len(inside))
        most_tokens = max(most_tokens, sum(inside))
    return most_requests, most_tokens


@pytest.mark.parametrize(
    ("rpm", "tpm", "tasks"),
    [
        pytest.param(600, 0, 60, id="rpm-600"),  # 10 requests/s
        pytest.param(0, 3000, 30, id="tpm-3000"),  # 50 tokens/s = 5 calls of 10 tokens/s
    ],
)
async def test_a_fleet_stays_within_the_declared_limits(
    redis_url: str, rpm: int, tpm: int, tasks: int
) -> None:
    """Six agents of two pools (12 concurrent slots) want far more than the key allows; the provider,
    whose own limit is just above the declared one, never has to refuse them."""
    log = ProviderLog()
    # The provider's limit: 20 % above the declared limit's worst case over 5 s (rate * (5 s + 1 s burst)).
    per_5s_requests = int(rpm / 60 * 6 * 1.2) if rpm else 0
    per_5s_tokens = int(tpm / 60 * 6 * 1.2) + CALL_TOKENS if tpm else 0
    limits = ProviderLimits(requests=per_5s_requests, tokens=per_5s_tokens, window=5.0, latency=0.05)
    key = f"openai/gpt-fake-{uuid.uuid4().hex[:6]}"
    queue = await open_queue(redis_url)
    try:
        async with (
            serve(limited_openai(limits, log, ("sk-0", "sk-1"))) as base,
            fleet(redis_url, base, key, rpm=rpm, tpm=tpm) as (pools, procs),
        ):
            started = time.monotonic()
            outcomes = await run_tasks(queue, pools, tasks)
            elapsed = time.monotonic() - started
            assert all(p.alive for p in procs)
    finally:
        await queue.close()
    assert [o.state for o in outcomes] == [TaskState.SUCCEEDED] * tasks, [o.error for o in outcomes]
    assert log.refused == []
    calls = [(t, tokens) for t, tokens, _ in log.accepted]
    assert len(calls) == tasks
    assert {k for _, _, k in log.accepted} == {"sk-0", "sk-1"}  # both pools called through the one key
    rate = rpm / 60 if rpm else tpm / 60 / CALL_TOKENS  # calls per second the key allows
    # Bound of the model: in any W seconds at most rate * (W + burst); checked over 1 s and 5 s windows.
    for window in (1.0, 5.0):
        most_requests, most_tokens = max_in_window(calls, window)
        assert most_requests <= rate * (window + 1) + 1, (window, most_requests)
        if tpm:
            assert most_tokens <= tpm / 60 * (window + 1) + CALL_TOKENS, (window, most_tokens)
    # ... and the fleet used what it was allowed: not far below the rate once the first burst is spent.
    span = calls[-1][0] - calls[0][0]
    achieved = (len(calls) - rate) / span  # the first second's burst excluded
    assert achieved >= 0.8 * rate, (achieved, rate)
    print(
        f"\nrate limit {'rpm' if rpm else 'tpm'}={rpm or tpm}: {len(calls)} calls from 6 agents in "
        f"{elapsed:.1f}s; allowed {rate:.1f} calls/s, achieved {achieved:.2f}/s after the burst; "
        f"most in 1 s: {max_in_window(calls, 1.0)}, in 5 s: {max_in_window(calls, 5.0)} (requests, tokens)"
    )


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def any_redis(request: pytest.FixtureRequest) -> str:
    """A real redis-server, or a real 6-node Redis Cluster (the key has a slot of its own there)."""
    url: str = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return url


async def test_a_429_pauses_the_key_for_every_agent_and_no_task_fails(any_redis: str) -> None:
    """The provider allows less than the pools declare (another client shares the account, say): its 429s
    pause the key fleet-wide for Retry-After, the refused tasks go back unstarted, and every task succeeds
    on its first attempt."""
    log = ProviderLog()
    limits = ProviderLimits(requests=5, window=1.0, retry_after=1, latency=0.02)
    key = f"openai/gpt-fake-{uuid.uuid4().hex[:6]}"
    queue = await open_queue(any_redis)
    try:
        async with (
            serve(limited_openai(limits, log, ("sk-0", "sk-1"))) as base,
            fleet(any_redis, base, key, rpm=6000, tpm=0) as (pools, procs),
        ):
            outcomes = await run_tasks(queue, pools, 24)
            logs = [p.log for p in procs]
    finally:
        await queue.close()
    assert [o.state for o in outcomes] == [TaskState.SUCCEEDED] * 24, [o.error for o in outcomes]
    assert {o.attempts for o in outcomes} == {1}  # a 429 spent nothing
    assert len(log.accepted) == 24
    assert log.refused, "the provider never refused: the test exercised nothing"
    # After each 429, silence from every agent of both pools for Retry-After, but for calls that were
    # already on their way (sent before the pause was recorded): allow 0.3 s for those.
    for refused_at, _ in log.refused:
        early = [a for a in log.in_window(refused_at + 0.3, refused_at + limits.retry_after - 0.05)]
        assert not early, f"calls {early} came within Retry-After of the 429 at {refused_at:.3f}"
    paused = [line for text in logs for line in text.splitlines() if "provider rate limit" in line]
    assert len(paused) == len(log.refused)
    # Episodes: 24 calls at 5 per window need at least 4 pauses of 1 s between 5 bursts.
    episodes = 1 + sum(1 for a, b in zip(log.refused, log.refused[1:], strict=False) if b[0] - a[0] > 0.5)
    assert episodes >= 4
    gaps = [round(b - a, 2) for (a, _), (b, _) in zip(log.refused, log.refused[1:], strict=False)]
    print(
        f"\n429 back-off: {len(log.refused)} refusals in {episodes} episodes, 24/24 tasks succeeded on "
        f"attempt 1; span {log.accepted[-1][0] - log.accepted[0][0]:.1f}s; gaps {json.dumps(gaps)}"
    )
