"""What a workflow step costs the orchestrator: one LangGraph superstep per single-part step, and on Redis one
checkpoint script per superstep (the step's writes travel with the checkpoint that follows them); runs
checkpointed by the previous graph shape (a part node, then a join node) still resume; held writes are
stored on their own when no checkpoint follows, and never outlive their thread."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import START

from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import WorkflowRunner
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver, connect_redis
from codeforge.orchestrator.checkpoint.pending import LINGER_SECONDS
from codeforge.orchestrator.compiler import BEGIN, run_node
from codeforge.queue import TaskQueue, open_queue
from codeforge.testing.redis_server import LocalRedis

CHAIN = """
input: {n: 1}
steps:
  - {name: a, pool: tag}
  - {name: b, pool: tag}
  - {name: c, pool: tag}
edges: [{from: a, to: b}, {from: b, to: c}]
"""


def spec(text: str) -> WorkflowSpec:
    return parse_workflow_spec(yaml.safe_load(text))


@pytest.fixture
async def queue() -> AsyncIterator[TaskQueue]:
    q = await open_queue("memory://")
    pools = [PoolSpec("tag", "python", {"pythonFunction": "support.workflow_agents:tag"}, concurrency=4)]
    async with InProcessAgents(q, pools):
        yield q
    await q.close()


async def supersteps(
    runner: WorkflowRunner, wf_spec: WorkflowSpec, workflow_id: str
) -> list[tuple[str, ...]]:
    """The nodes of each superstep the run went through, oldest first."""
    config: RunnableConfig = {"configurable": {"thread_id": workflow_id}}
    history = [s async for s in runner.graph(wf_spec).aget_state_history(config)]
    return [s.next for s in reversed(history)]


async def test_a_single_part_step_is_one_superstep(queue: TaskQueue) -> None:
    runner = WorkflowRunner(queue)
    outcome = await runner.run("wf-chain", spec(CHAIN))
    assert outcome.status == "succeeded", outcome.error
    assert [r["step"] for r in outcome.history] == ["a", "b", "c"]
    # the part ran in its step's node: no `<step>_run` superstep between the steps
    # and the first route came with the input: no begin superstep before the first step
    assert await supersteps(runner, spec(CHAIN), "wf-chain") == [("__start__",), ("a",), ("b",), ("c",), ()]


async def test_a_run_checkpointed_before_its_begin_node_ran_resumes_through_it(queue: TaskQueue) -> None:
    """A run saved by the previous graph shape (its input, without a route: `_begin` next) routes there."""
    runner, wf_spec = WorkflowRunner(queue), spec(CHAIN)
    graph = runner.graph(wf_spec)
    config: RunnableConfig = {"configurable": {"thread_id": "wf-old-start"}}
    await graph.aupdate_state(config, {"input": {"n": 1}, "started_at": 1.0}, as_node=START)
    assert (await graph.aget_state(config)).next == (BEGIN,)
    outcome = await runner.run("wf-old-start", wf_spec)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.resumed
    assert [r["step"] for r in outcome.history] == ["a", "b", "c"]


async def test_a_fan_out_still_runs_its_parts_as_parallel_tasks(queue: TaskQueue) -> None:
    text = """
input: {n: 1}
steps:
  - {name: fan, pool: tag, parallel: 3}
  - {name: join, pool: tag}
edges: [{from: fan, to: join}]
"""
    runner = WorkflowRunner(queue)
    outcome = await runner.run("wf-fan", spec(text))
    assert outcome.status == "succeeded", outcome.error
    assert [(r["step"], r["parts"]) for r in outcome.history] == [("fan", 3), ("join", 1)]
    steps = await supersteps(runner, spec(text), "wf-fan")
    assert steps[1] == (run_node("fan"),) * 3  # three Sends, one superstep
    assert steps[2:] == [("fan",), ("join",), ()]


async def test_a_run_checkpointed_with_its_part_done_joins_it_without_dispatching(queue: TaskQueue) -> None:
    """A run saved by the previous graph shape, between a step's part node and its join node, resumes: the
    join takes the recorded part instead of dispatching the step's task again."""
    runner, wf_spec = WorkflowRunner(queue), spec(CHAIN)
    graph = runner.graph(wf_spec)
    config: RunnableConfig = {"configurable": {"thread_id": "wf-legacy"}}
    route = {"to": "a", "visit": 1, "payloads": [{"input": {"n": 1}, "workflow": "wf-legacy", "step": "a"}]}
    await graph.aupdate_state(config, {"input": {"n": 1}, "started_at": 1.0, "route": route}, as_node=BEGIN)
    recorded = {"index": 0, "attempts": 1, "status": "succeeded", "result": {"recorded": True}}
    await graph.aupdate_state(config, {"parts": {"a#1": {"0": recorded}}}, as_node=run_node("a"))
    assert (await graph.aget_state(config)).next == ("a",)
    outcome = await runner.run("wf-legacy", wf_spec)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.resumed
    assert outcome.results["a"] == {"recorded": True}
    assert await queue.get("tag", "wf-legacy/a/v1/p0/a0") is None  # never dispatched
    assert await queue.get("tag", "wf-legacy/b/v1/p0/a0") is not None
    assert "a#1" not in ((await graph.aget_state(config)).values.get("parts") or {})


async def evalsha_calls(client: Any, command: str = "evalsha") -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_on_redis_each_superstep_is_one_checkpoint_script(queue: TaskQueue) -> None:
    """Queue in memory, checkpoints alone on a private redis-server: every script call there is the
    checkpointer's. One per checkpoint: each step's writes went with the checkpoint after it."""
    server = LocalRedis().start()
    # a linger longer than any superstep here, so a loaded machine cannot make a write go alone
    saver = RedisCheckpointSaver(await connect_redis(server.url), prefix="cf:cp:steps", writes_linger=30.0)
    counter = aioredis.Redis.from_url(server.url)
    try:
        runner = WorkflowRunner(queue, saver)
        before = await evalsha_calls(counter)
        latest_reads = await evalsha_calls(counter, "zrevrangebylex")
        outcome = await runner.run("wf-redis", spec(CHAIN))
        assert outcome.status == "succeeded", outcome.error
        scripts = await evalsha_calls(counter) - before
        # one read of the new thread: the runner's, which LangGraph's own read right after takes as is
        assert await evalsha_calls(counter, "zrevrangebylex") - latest_reads == 1
        checkpoints = await supersteps(runner, spec(CHAIN), "wf-redis")
        assert len(checkpoints) == 5
        # was 17 (9 checkpoints and 8 tasks' writes), then 6 and a registry SADD; the registry is in the first
        assert scripts == len(checkpoints)
        # and the run did not wait out the linger: the last writes went with the final checkpoint
        assert outcome.duration < 30
    finally:
        await counter.aclose()
        await saver.aclose()
        server.stop()


@pytest.fixture
async def saver(redis_url: str) -> AsyncIterator[RedisCheckpointSaver]:
    client = await connect_redis(redis_url)
    yield RedisCheckpointSaver(client, prefix=f"cf:cp:held-{uuid.uuid4().hex[:8]}")
    await client.aclose()


async def first_checkpoint(saver: RedisCheckpointSaver, thread_id: str) -> RunnableConfig:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"a": 1}
    checkpoint["channel_versions"] = {"a": "1"}
    return await saver.aput(config, checkpoint, {"source": "input", "step": -1}, {"a": "1"})


async def test_held_writes_are_stored_on_their_own_when_no_checkpoint_follows(
    saver: RedisCheckpointSaver, redis_url: str
) -> None:
    saved = await first_checkpoint(saver, "wf-alone")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await saver.aput_writes(saved, [("a", 2)], task_id="t1")
    assert loop.time() - started >= LINGER_SECONDS * 0.9  # it waited for a checkpoint that did not come
    # stored when it returned: another connection sees it, without this saver's help
    other = RedisCheckpointSaver(await connect_redis(redis_url), prefix=saver.prefix)
    try:
        loaded = await other.aget_tuple(saved)
        assert loaded is not None
        assert [(w[1], w[2]) for w in loaded.pending_writes or []] == [("a", 2)]
    finally:
        await other.aclose()
        await saver.adelete_thread("wf-alone")


async def test_held_writes_go_with_the_next_checkpoint_and_return_with_it(
    saver: RedisCheckpointSaver,
) -> None:
    saved = await first_checkpoint(saver, "wf-both")
    writes = asyncio.ensure_future(saver.aput_writes(saved, [("a", 2)], task_id="t1"))
    await asyncio.sleep(0)  # the writes are held
    assert not writes.done()
    nxt = empty_checkpoint()
    nxt["channel_values"] = {"a": 2}
    nxt["channel_versions"] = {"a": "2"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    await saver.aput(saved, nxt, {"source": "loop", "step": 0}, {"a": "2"})
    await asyncio.wait_for(writes, LINGER_SECONDS / 2)  # settled by the checkpoint, not the linger
    assert loop.time() - started < LINGER_SECONDS
    parent = await saver.aget_tuple(saved)
    assert parent is not None
    assert [(w[1], w[2]) for w in parent.pending_writes or []] == [("a", 2)]
    await saver.adelete_thread("wf-both")


async def test_held_writes_wait_while_their_own_checkpoint_is_not_stored(
    saver: RedisCheckpointSaver,
) -> None:
    """With hundreds of runs at once LangGraph stores a thread's checkpoints seconds behind its supersteps,
    each after the one before: writes of a checkpoint not stored yet wait for it and then its successor."""
    saved = await first_checkpoint(saver, "wf-behind")
    later = empty_checkpoint()  # the next checkpoint, whose put LangGraph has not got to yet
    later["channel_values"] = {"a": 2}
    later["channel_versions"] = {"a": "2"}
    ahead: RunnableConfig = {"configurable": {**saved["configurable"], "checkpoint_id": later["id"]}}
    writes = asyncio.ensure_future(saver.aput_writes(ahead, [("a", 3)], task_id="t1"))
    await asyncio.sleep(LINGER_SECONDS * 3)
    assert not writes.done()  # still held: its checkpoint has not been stored
    stored = await saver.aput(saved, later, {"source": "loop", "step": 0}, {"a": "2"})
    assert not writes.done()  # now its successor's turn
    last = empty_checkpoint()
    last["channel_values"] = {"a": 3}
    last["channel_versions"] = {"a": "3"}
    await saver.aput(stored, last, {"source": "loop", "step": 1}, {"a": "3"})
    await asyncio.wait_for(writes, LINGER_SECONDS / 2)  # taken by the successor
    loaded = await saver.aget_tuple(stored)
    assert loaded is not None
    assert [(w[1], w[2]) for w in loaded.pending_writes or []] == [("a", 3)]
    await saver.adelete_thread("wf-behind")


async def test_deleting_a_thread_stores_its_held_writes_first_and_leaves_no_key(
    saver: RedisCheckpointSaver,
) -> None:
    saved = await first_checkpoint(saver, "wf-gone")
    writes = asyncio.ensure_future(saver.aput_writes(saved, [("a", 2)], task_id="t1"))
    await asyncio.sleep(0)
    await saver.adelete_thread("wf-gone")
    await writes  # stored before the delete, not after it
    await asyncio.sleep(LINGER_SECONDS * 2)
    keys = [k async for k in saver.client.scan_iter(match=f"{saver.prefix}:*wf-gone*")]
    assert keys == []
