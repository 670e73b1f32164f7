"""Kopf's watcher spawns a worker per new object; its scheduler's `spawn` gave up a loop turn on every call,
so a busy loop read one new object per turn. `kopf_settings.spawn_in_batches` gives it up once per batch."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from kopf._cogs.aiokits import aiotasks

from codeforge.controller import kopf_settings


@pytest.fixture
def kopfs_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf's own spawn for the test (an operator started in this process may have patched it), and
    whatever was in place before restored after it."""
    spawn = aiotasks.Scheduler.spawn
    monkeypatch.setattr(aiotasks.Scheduler, "spawn", getattr(spawn, "kopf_spawn", spawn))


async def turns_per_spawn(spawns: int) -> tuple[list[int], list[int]]:
    """Spawn `spawns` workers on a real Kopf scheduler: the loop turns that passed during each spawn (a
    ticker re-scheduled by call_soon counts them), and which workers ran."""
    scheduler = aiotasks.Scheduler()
    loop = asyncio.get_running_loop()
    ticks = [0]
    stop = [False]

    def tick() -> None:
        ticks[0] += 1
        if not stop[0]:
            loop.call_soon(tick)

    loop.call_soon(tick)
    await asyncio.sleep(0)
    ran: list[int] = []

    async def worker(i: int) -> None:
        ran.append(i)

    passed = []
    for i in range(spawns):
        before = ticks[0]
        await scheduler.spawn(worker(i), name=f"worker {i}")
        passed.append(ticks[0] - before)
    stop[0] = True
    await scheduler.wait()
    await scheduler.close()
    return passed, ran


@pytest.mark.usefixtures("kopfs_spawn")
async def test_kopfs_own_spawn_gives_up_a_turn_per_new_object() -> None:
    passed, ran = await turns_per_spawn(8)
    assert all(turns >= 1 for turns in passed)
    assert sorted(ran) == list(range(8))


@pytest.mark.usefixtures("kopfs_spawn")
async def test_batched_spawns_give_up_one_turn_per_batch_and_run_every_worker() -> None:
    assert kopf_settings.spawn_in_batches(4)
    assert kopf_settings.spawn_in_batches(4)  # idempotent
    passed, ran = await turns_per_spawn(12)
    assert passed == [0, 0, 0, 1] * 3
    assert sorted(ran) == list(range(12))


@pytest.mark.usefixtures("kopfs_spawn")
async def test_a_closed_scheduler_still_refuses_and_closes_the_coroutine() -> None:
    assert kopf_settings.spawn_in_batches(4)
    scheduler = aiotasks.Scheduler()
    await scheduler.close()

    async def worker() -> None:
        raise AssertionError("must not run")

    coro = worker()
    with pytest.raises(RuntimeError, match="closed and inactive scheduler"):
        await scheduler.spawn(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # not left to warn "never awaited"


@pytest.mark.usefixtures("kopfs_spawn")
def test_another_kopfs_scheduler_keeps_its_own_spawn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(aiotasks, "SchedulerJob")
    own = aiotasks.Scheduler.spawn
    assert not kopf_settings.spawn_in_batches()
    assert aiotasks.Scheduler.spawn is own
    assert "gives up a loop turn per new object" in caplog.text
