"""Property-based test of the memory backend: random interleavings never lose or duplicate a task.

A hypothesis state machine drives enqueue / claim / heartbeat / complete / fail / release / cancel /
requeue / time passing (lease expiry and retry backoffs) / stale-lease use against a small model of where
every task must be, and checks the queue agrees after every step. At the end everything is drained: each
task ends in exactly one terminal state and no task was ever held by two leases at once.

Time is virtual (the memory module's clock is swapped for one the machine advances), so leases expire
exactly when the model says, and a run takes milliseconds instead of lease-length sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import codeforge.queue.memory as memory_module
from codeforge.api.task import Priority, Task, TaskState
from codeforge.queue import Lease, LeaseLostError
from codeforge.queue.memory import MemoryTaskQueue

T = TypeVar("T")
POOL = "prop"


class VirtualClock:
    """Stands in for the `time` module inside the memory backend: wall time moves only when told."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Expected:
    """Where the model says one task is."""

    priority: Priority
    max_attempts: int
    lease_seconds: float
    max_lost_leases: int = 10
    lost_backoff: float = 1.0
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    failures: int = 0  # the handler's budget
    lost: int = 0  # the lost-lease budget
    hold: float = 0.0  # the current claim's lease length
    ready_at: float = 0.0  # > 0 while delayed by a retry backoff
    expires_at: float = 0.0  # while RUNNING
    result: Any = None


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self._real_time = memory_module.time  # type: ignore[attr-defined]
        memory_module.time = self.clock  # type: ignore[attr-defined,assignment]
        self.loop = asyncio.new_event_loop()
        self.queue = MemoryTaskQueue()
        self.tasks: dict[str, Expected] = {}
        self.leases: dict[str, Lease] = {}  # the one valid lease per RUNNING task
        self.stale: list[Lease] = []  # leases that must be refused from now on
        self.next_id = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.drain()
        finally:
            self.run(self.queue.close())
            self.loop.close()
            memory_module.time = self._real_time  # type: ignore[attr-defined]

    # --- model helpers ----------------------------------------------------------------------------------

    def in_state(self, state: TaskState) -> list[str]:
        return [i for i, t in self.tasks.items() if t.state is state]

    def ready(self) -> list[str]:
        return [i for i in self.in_state(TaskState.QUEUED) if not self.tasks[i].ready_at]

    def delayed(self) -> list[str]:
        return [i for i in self.in_state(TaskState.QUEUED) if self.tasks[i].ready_at]

    def retire(self, task_id: str) -> None:
        """The task's current lease becomes stale."""
        self.stale.append(self.leases.pop(task_id))

    def requeue_or_bury(self, expected: Expected, spent: bool, delay: float) -> TaskState:
        if spent:
            expected.state = TaskState.DEAD
        else:
            expected.state = TaskState.QUEUED
            expected.ready_at = self.clock.now + delay if delay > 0 else 0.0
        return expected.state

    def handler_failed(self, expected: Expected, delay: float) -> TaskState:
        expected.failures += 1
        return self.requeue_or_bury(expected, expected.failures >= expected.max_attempts, delay)

    def lease_lost(self, expected: Expected, backoff: bool) -> TaskState:
        expected.lost += 1
        delay = min(expected.lost_backoff * 2 ** (expected.lost - 1), 60.0) if backoff else 0.0
        return self.requeue_or_bury(expected, expected.lost >= expected.max_lost_leases, delay)

    # --- rules ------------------------------------------------------------------------------------------

    @rule(
        priority=st.sampled_from(Priority),
        max_attempts=st.integers(1, 3),
        lease_seconds=st.sampled_from([10.0, 30.0]),
        max_lost_leases=st.integers(1, 3),
        lost_backoff=st.sampled_from([0.0, 5.0]),
    )
    def enqueue_new(
        self,
        priority: Priority,
        max_attempts: int,
        lease_seconds: float,
        max_lost_leases: int = 10,
        lost_backoff: float = 0.0,
    ) -> None:
        task_id = f"t{self.next_id}"
        self.next_id += 1
        task = Task(
            id=task_id,
            pool=POOL,
            priority=priority,
            payload={"n": self.next_id},
            max_attempts=max_attempts,
            lease_seconds=lease_seconds,
            max_lost_leases=max_lost_leases,
            lost_lease_backoff_seconds=lost_backoff,
        )
        assert self.run(self.queue.enqueue(task)) is True
        self.tasks[task_id] = Expected(priority, max_attempts, lease_seconds, max_lost_leases, lost_backoff)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def enqueue_duplicate(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.tasks)))
        twin = Task(id=task_id, pool=POOL, priority=Priority.CRITICAL, payload="twin")
        assert self.run(self.queue.enqueue(twin)) is False

    @rule(max_tasks=st.integers(1, 3), lease=st.sampled_from([None, 20.0]))
    def claim(self, max_tasks: int, lease: float | None = None) -> None:
        ready = self.ready()
        leases = self.run(self.queue.claim_many(POOL, "agent", max_tasks, timeout=0, lease_seconds=lease))

        assert len(leases) == min(max_tasks, len(ready))
        claimed = [granted.id for granted in leases]
        assert len(set(claimed)) == len(claimed), f"one claim returned a task twice: {claimed}"
        left = [self.tasks[i].priority for i in ready if i not in claimed]
        for granted in leases:
            expected = self.tasks[granted.id]
            assert granted.id in ready, (
                f"claimed {granted.id} which is {expected.state} (ready_at {expected.ready_at})"
            )
            assert granted.id not in self.leases, f"{granted.id} handed out while another lease holds it"
            assert all(expected.priority <= p for p in left), "a less urgent task was claimed first"
            expected.state = TaskState.RUNNING
            expected.attempts += 1
            expected.expires_at = granted.expires_at
            assert granted.task.attempts == expected.attempts
            expected.hold = expected.lease_seconds if lease is None else lease
            assert granted.expires_at == self.clock.now + expected.hold
            self.leases[granted.id] = granted

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.leases)))
        lease = self.run(self.queue.heartbeat(self.leases[task_id]))
        assert lease.expires_at == self.clock.now + self.tasks[task_id].hold, "renewed by the claim's lease"
        self.tasks[task_id].expires_at = lease.expires_at
        self.leases[task_id] = lease

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.leases)))
        result = {"done": task_id, "attempt": self.tasks[task_id].attempts}
        self.run(self.queue.complete(self.leases[task_id], result))
        self.tasks[task_id].state = TaskState.SUCCEEDED
        self.tasks[task_id].result = result
        self.retire(task_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), retryable=st.booleans(), delay=st.sampled_from([0.0, 5.0]))
    def fail(self, data: st.DataObject, retryable: bool, delay: float) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.leases)))
        state = self.run(
            self.queue.fail(self.leases[task_id], "boom", retryable=retryable, retry_delay=delay)
        )
        expected = self.tasks[task_id]
        if retryable:
            assert state is self.handler_failed(expected, delay)
        else:
            assert state is TaskState.FAILED
            expected.state = TaskState.FAILED
        self.retire(task_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), started=st.booleans())
    def release(self, data: st.DataObject, started: bool) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.leases)))
        state = self.run(self.queue.release(self.leases[task_id], started=started, reason="drained"))
        expected = self.tasks[task_id]
        if started:  # a drain out of grace: one lost lease, redelivered at once
            assert state is self.lease_lost(expected, backoff=False)
        else:  # unstarted: nothing spent
            assert state is TaskState.QUEUED
            expected.state = TaskState.QUEUED
            expected.attempts -= 1
        self.retire(task_id)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.tasks)))
        expected = self.tasks[task_id]
        cancelled = self.run(self.queue.cancel(POOL, task_id, reason="property test"))
        assert cancelled is (not expected.state.terminal)
        if cancelled:
            expected.state = TaskState.CANCELLED
            if task_id in self.leases:
                self.retire(task_id)

    @precondition(lambda self: self.in_state(TaskState.DEAD))
    @rule(data=st.data())
    def requeue_dead(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.in_state(TaskState.DEAD))))
        assert self.run(self.queue.requeue_dead(POOL, task_id)) is True
        expected = self.tasks[task_id]
        expected.state, expected.attempts, expected.ready_at = TaskState.QUEUED, 0, 0.0
        expected.failures = expected.lost = 0

    @rule(seconds=st.sampled_from([1.0, 6.0, 11.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        """Leases run out and backoffs end; a reaper then requeues (after the lost-lease backoff) or
        dead-letters the expired tasks."""
        self.clock.advance(seconds)
        for task_id in self.delayed():
            if self.tasks[task_id].ready_at <= self.clock.now:
                self.tasks[task_id].ready_at = 0.0
        expired = [i for i in sorted(self.leases) if self.tasks[i].expires_at <= self.clock.now]
        for task_id in expired:
            self.lease_lost(self.tasks[task_id], backoff=True)
            self.retire(task_id)

        assert self.run(self.queue.reap(POOL)) == len(expired)

    @precondition(lambda self: self.stale)
    @rule(data=st.data(), action=st.sampled_from(["complete", "heartbeat", "fail", "release"]))
    def stale_lease_is_refused(self, data: st.DataObject, action: str) -> None:
        lease = data.draw(st.sampled_from(self.stale))
        calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
            "complete": lambda: self.queue.complete(lease, "stale"),
            "heartbeat": lambda: self.queue.heartbeat(lease),
            "fail": lambda: self.queue.fail(lease, "stale", retryable=False),
            "release": lambda: self.queue.release(lease),
        }
        call = calls[action]
        with pytest.raises(LeaseLostError):  # TaskCancelledError (a LeaseLostError) for a cancelled task
            self.run(call())

    # --- invariants -------------------------------------------------------------------------------------

    @invariant()
    def counts_match_the_model(self) -> None:
        stats = self.run(self.queue.stats(POOL))
        expected = (
            len(self.ready()),
            len(self.delayed()),
            len(self.in_state(TaskState.RUNNING)),
            len(self.in_state(TaskState.DEAD)),
        )
        assert (stats.queued, stats.delayed, stats.in_flight, stats.dead) == expected

    @invariant()
    def every_task_is_where_the_model_says(self) -> None:
        for task_id, expected in self.tasks.items():
            outcome = self.run(self.queue.get(POOL, task_id))
            assert outcome is not None, f"task {task_id} was lost"
            assert outcome.state is expected.state, f"task {task_id}: {outcome.state} != {expected.state}"
            assert outcome.attempts == expected.attempts
            if expected.state is TaskState.SUCCEEDED:
                assert outcome.result == expected.result

    @invariant()
    def dead_letters_match(self) -> None:
        dead = self.run(self.queue.dead_letters(POOL, limit=1000))
        assert sorted(d.id for d in dead) == sorted(self.in_state(TaskState.DEAD))

    # --- the end ----------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish everything: each task still alive is delivered once more and completed exactly once."""
        self.time_passes(3600.0)  # every lease expires and every backoff ends
        self.time_passes(3600.0)  # and the lost-lease backoffs those expiries started
        for task_id in self.in_state(TaskState.DEAD):
            assert self.run(self.queue.requeue_dead(POOL, task_id)) is True
        delivered: list[str] = []
        while leases := self.run(self.queue.claim_many(POOL, "drainer", 10, timeout=0)):
            for lease in leases:
                delivered.append(lease.id)
                self.run(self.queue.complete(lease, "drained"))

        alive = {i for i, t in self.tasks.items() if not t.state.terminal or t.state is TaskState.DEAD}
        assert sorted(delivered) == sorted(alive), "a live task was lost or delivered twice while draining"
        for task_id, expected in self.tasks.items():
            outcome = self.run(self.queue.get(POOL, task_id))
            assert outcome is not None
            assert outcome.state.terminal
            if task_id in alive:
                assert (outcome.state, outcome.result) == (TaskState.SUCCEEDED, "drained")
            else:
                assert outcome.state is expected.state, "a finished task changed after it finished"
        stats = self.run(self.queue.stats(POOL))
        assert (stats.queued, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMemoryQueueInterleavings = QueueMachine.TestCase


def test_virtual_clock_drives_the_backend() -> None:
    """Guards the test's own premise: the memory backend reads the clock this test swaps in."""
    machine = QueueMachine()
    try:
        machine.enqueue_new(Priority.MEDIUM, 1, 10.0, max_lost_leases=1)
        machine.claim(1)
        assert machine.run(machine.queue.reap(POOL)) == 0
        machine.time_passes(10.0)  # asserts that the backend's reaper saw exactly this one expiry
        assert machine.tasks["t0"].state is TaskState.DEAD
    finally:
        machine.teardown()
