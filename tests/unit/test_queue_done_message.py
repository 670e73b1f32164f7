"""The queue's `done` notification as the result watcher reads it: the current layout (with the end time and
the agent's hold time) and the one scripts published before them (an older agent during a rolling upgrade)."""

from __future__ import annotations

from codeforge.api.task import TaskState
from codeforge.queue.redis_results import outcome_of, parse_done, run_ms_of


def test_the_current_layout_carries_end_and_hold_times() -> None:
    data = "\0".join(["t1", "succeeded", "1", "agent-a", "1733140000123", "250", "", '{"n": 1}'])
    task_id, state, attempts, consumer, fin, run, error, result = parse_done(data)
    outcome = outcome_of("p", task_id, state, attempts, result, error, consumer, finished_ms=fin, run_ms=run)
    assert outcome.state is TaskState.SUCCEEDED
    assert outcome.result == {"n": 1}
    assert outcome.finished_at == 1733140000.123
    assert outcome.run_seconds == 0.25


def test_an_unclaimed_end_has_no_hold_time() -> None:
    data = "\0".join(["t1", "cancelled", "0", "", "1733140000123", "", "not needed", ""])
    *_, fin, run, error, _result = parse_done(data)
    assert (fin, run, error) == ("1733140000123", None, "not needed")


def test_the_layout_before_the_times_still_parses() -> None:
    data = "\0".join(["t1", "failed", "2", "agent-a", "boom", ""])
    assert parse_done(data) == ("t1", "failed", "2", "agent-a", None, None, "boom", "")


def test_a_stored_hold_time_needs_a_claim_since_the_task_was_last_ready() -> None:
    assert run_ms_of("5000", "4000", "3000") == "1000"
    assert run_ms_of("5000", "2000", "3000") is None  # claimed before, then back in the queue: not a run
    assert run_ms_of("5000", None, "3000") is None
    assert run_ms_of(None, "4000", "3000") is None
