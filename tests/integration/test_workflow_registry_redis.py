"""The operator's Workflow registry and services on a real Redis: the runs of a starting operator ask for the
queue and the runner all at once, and get one queue client and one runner on one checkpoint store, not one
of each (and their connections) per run (`controller/shared_opening.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from codeforge.controller import services as services_module
from codeforge.controller.config import OperatorConfig
from codeforge.controller.services import OperatorServices
from codeforge.controller.workflow import registry as registry_module
from codeforge.controller.workflow.registry import Unavailable, WorkflowRegistry
from codeforge.controller.workflow.settings import WorkflowSettings
from codeforge.controller.workflow.status_writer import StatusWriter
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver, open_checkpointer
from codeforge.queue import QueueError, TaskQueue, open_queue

pytestmark = [pytest.mark.redis]

LOG = logging.getLogger("test")


async def _no_patch(*_: Any) -> None:
    return None


@contextlib.asynccontextmanager
async def _operator(
    redis_url: str, settings: WorkflowSettings | None = None
) -> AsyncIterator[tuple[OperatorServices, WorkflowRegistry]]:
    """An operator's services and Workflow registry on `redis_url`, closed as the operator closes them."""
    services = OperatorServices(OperatorConfig(queue_url=redis_url))
    workflows = WorkflowRegistry(settings=settings or WorkflowSettings(), writer=StatusWriter(_no_patch))
    try:
        yield services, workflows
    finally:
        await workflows.close()
        await services.close()


async def test_runs_that_ask_at_once_share_one_runner_and_one_checkpoint_store(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[RedisCheckpointSaver] = []
    real_open = open_checkpointer

    async def counted(url: str) -> RedisCheckpointSaver:
        saver = await real_open(url)
        opened.append(saver)
        return saver

    queues: list[TaskQueue] = []

    async def counted_queue(url: str) -> TaskQueue:
        queues.append(await open_queue(url))
        return queues[-1]

    monkeypatch.setattr(registry_module, "open_checkpointer", counted)
    monkeypatch.setattr(services_module, "open_queue", counted_queue)
    async with _operator(redis_url) as (services, workflows):
        runners = await asyncio.gather(*(workflows.connect(services, LOG) for _ in range(50)))
        assert len(queues) == 1, f"{len(queues)} queue clients opened for 50 runs starting together"
        assert len(opened) == 1, f"{len(opened)} checkpoint stores opened for 50 runs starting together"
        assert runners[0].queue is queues[0] is services.queue
        assert all(runner is runners[0] for runner in runners)
        assert runners[0].checkpointer is opened[0]
        assert await workflows.connect(services, LOG) is runners[0]  # later runs: no opening at all
        assert len(opened) == 1


async def test_a_run_cancelled_while_the_store_opens_leaves_the_opening_to_the_others(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open_checkpointer
    release = asyncio.Event()

    async def slow(url: str) -> RedisCheckpointSaver:
        await release.wait()
        return await real_open(url)

    monkeypatch.setattr(registry_module, "open_checkpointer", slow)
    async with _operator(redis_url) as (services, workflows):
        first = asyncio.ensure_future(workflows.connect(services, LOG))
        second = asyncio.ensure_future(workflows.connect(services, LOG))
        await asyncio.sleep(0.05)
        first.cancel()
        release.set()
        runner = await asyncio.wait_for(second, 10)
        assert first.cancelled()
        assert isinstance(runner.checkpointer, RedisCheckpointSaver)


async def test_a_failed_opening_is_tried_again_by_the_next_run(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open_checkpointer
    calls = 0

    async def flaky(url: str) -> RedisCheckpointSaver:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise QueueError("checkpoint store refused the connection")
        return await real_open(url)

    monkeypatch.setattr(registry_module, "open_checkpointer", flaky)
    async with _operator(redis_url) as (services, workflows):
        results = await asyncio.gather(
            *(workflows.connect(services, LOG) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, Unavailable) and "refused the connection" in str(r) for r in results)
        runner = await workflows.connect(services, LOG)
        assert isinstance(runner.checkpointer, RedisCheckpointSaver)
        assert calls == 2


async def test_the_runner_parks_runs_after_the_operators_setting(redis_url: str) -> None:
    settings = WorkflowSettings.from_env({"CODEFORGE_WORKFLOW_PARK_SECONDS": "3"})
    async with _operator(redis_url, settings) as (services, workflows):
        runner = await workflows.connect(services, LOG)
        assert runner.park_after == 3.0


async def test_the_admin_connection_is_opened_once_for_callers_that_ask_at_once(redis_url: str) -> None:
    async with _operator(redis_url) as (services, _):
        connections = await asyncio.gather(*(services.admin_redis(LOG) for _ in range(20)))
        assert connections[0] is not None
        assert all(connection is connections[0] for connection in connections)
