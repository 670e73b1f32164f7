"""Dead letters: show one, purge some, and their retention (the TaskQueue contract, on every backend).

`codeforge dlq show | purge` and the retention (`reap` removes dead letters older than it and counts them in
`stats().dead_expired`) run on the memory backend, one real redis-server and a real 6-node Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from codeforge.api.task import TaskState
from codeforge.queue import HANDLER_BUDGET_SPENT, QueueConfigError, TaskQueue, open_queue
from integration.test_queue_contract import claim_one, pool, queue, queue_url  # noqa: F401  (fixtures)
from support.tasks import make_task


async def bury(target: TaskQueue, pool_name: str, *names: str) -> None:
    for name in names:
        await target.enqueue(make_task(pool_name, name, max_attempts=1, payload={"n": name}, step="build"))
        lease = await claim_one(target, pool_name, f"agent-{name}")
        assert await target.fail(lease, f"{name} broke", retryable=True) == TaskState.DEAD


async def test_a_dead_letter_shows_its_task_error_budgets_and_time_of_death(
    queue: TaskQueue,  # noqa: F811
    pool: str,  # noqa: F811
) -> None:
    before = time.time()
    await bury(queue, pool, "dead-a")
    letter = await queue.dead_letter(pool, "dead-a")
    assert letter is not None
    assert (letter.id, letter.state, letter.attempts, letter.consumer) == (
        "dead-a", TaskState.DEAD, 1, "agent-dead-a",
    )  # fmt: skip
    assert letter.error is not None
    assert letter.error.startswith("dead-a broke")
    assert HANDLER_BUDGET_SPENT in letter.error
    assert letter.task is not None
    assert (letter.task.payload, letter.task.step) == ({"n": "dead-a"}, "build")
    assert (letter.failures, letter.lost_leases) == (1, 0)
    assert before - 2 <= letter.died_at <= time.time() + 2
    assert [d.died_at for d in await queue.dead_letters(pool)] == [letter.died_at]

    await queue.enqueue(make_task(pool, "alive"))
    assert await queue.dead_letter(pool, "alive") is None, "a queued task is no dead letter"
    assert await queue.dead_letter(pool, "never-existed") is None


async def test_purge_deletes_the_named_dead_letters_only(
    queue: TaskQueue,  # noqa: F811
    pool: str,  # noqa: F811
) -> None:
    await bury(queue, pool, "dead-a", "dead-b", "dead-c")
    await queue.enqueue(make_task(pool, "alive"))

    assert await queue.purge_dead(pool, ["dead-a", "dead-c", "alive", "never-existed"]) == 2
    assert [d.id for d in await queue.dead_letters(pool)] == ["dead-b"]
    assert await queue.get(pool, "dead-a") is None, "a purged dead letter's record goes too"
    assert await queue.get(pool, "alive") is not None, "purge never touches a live task"
    assert await queue.purge_dead(pool, ["dead-a"]) == 0
    assert await queue.purge_dead(pool, []) == 0
    stats = await queue.stats(pool)
    assert (stats.dead, stats.queued, stats.dead_expired) == (1, 1, 0), "a purge is no expiry"
    with pytest.raises(ValueError, match="at most"):
        await queue.purge_dead(pool, [f"t{i}" for i in range(10001)])
    with pytest.raises(ValueError, match="limit"):
        await queue.dead_letters(pool, limit=0)


async def test_dead_letters_past_their_retention_are_removed_and_counted(queue_url: str) -> None:  # noqa: F811
    short = await open_queue(queue_url, dead_letter_retention=0.5)
    forever = await open_queue(queue_url, dead_letter_retention=0)
    name, kept = f"ret-{time.monotonic_ns()}", f"kept-{time.monotonic_ns()}"
    try:
        await bury(short, name, "old-a", "old-b")
        await bury(forever, kept, "old-c")
        assert await short.reap(name) == 0
        assert (await short.stats(name)).dead == 2, "young dead letters stay"
        await asyncio.sleep(0.7)
        await bury(short, name, "young")

        await short.reap(name)
        assert [d.id for d in await short.dead_letters(name)] == ["young"]
        assert await short.get(name, "old-a") is None
        stats = await short.stats(name)
        assert (stats.dead, stats.dead_expired) == (1, 2)
        await forever.reap(kept)
        assert [d.id for d in await forever.dead_letters(kept)] == ["old-c"], "a retention of 0 keeps all"
    finally:
        await short.close()
        await forever.close()


async def test_the_retention_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEFORGE_DEAD_LETTER_RETENTION_SECONDS", "60")
    opened = await open_queue("memory://")
    assert getattr(opened, "dead_letter_retention", None) == 60
    monkeypatch.setenv("CODEFORGE_DEAD_LETTER_RETENTION_SECONDS", "a week")
    with pytest.raises(QueueConfigError, match="CODEFORGE_DEAD_LETTER_RETENTION_SECONDS='a week'"):
        await open_queue("memory://")
    monkeypatch.delenv("CODEFORGE_DEAD_LETTER_RETENTION_SECONDS")
    assert getattr(await open_queue("memory://"), "dead_letter_retention", None) == 7 * 24 * 3600
