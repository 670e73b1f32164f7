"""The Task model refuses bad input with an error that names the field and says what to do."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import codeforge.queue.base as queue_base
from codeforge.api.limits import clip
from codeforge.api.task import (
    DEFAULT_MAX_LOST_LEASES,
    LOST_LEASE_BACKOFF_CAP_SECONDS,
    MAX_PAYLOAD_BYTES,
    Priority,
    Task,
    TaskState,
    TaskWorkspace,
    WorkspaceAction,
    validate_pool_name,
)


def build(**fields: Any) -> Task:
    return Task(**{"id": "t-1", "pool": "research", **fields})


def error_of(**fields: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        build(**fields)
    return info.value


# --- valid input ----------------------------------------------------------------------------------------


def test_defaults_make_a_usable_task() -> None:
    task = build()
    assert (task.priority, task.attempts, task.max_attempts, task.lease_seconds) == (
        Priority.MEDIUM,
        0,
        3,
        30.0,
    )
    assert task.payload is None
    assert task.created_at > 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Priority.HIGH, Priority.HIGH),
        ("critical", Priority.CRITICAL),
        ("  Low ", Priority.LOW),
        ("MEDIUM", Priority.MEDIUM),
        (2, Priority.HIGH),
        ("1", Priority.CRITICAL),
    ],
)
def test_priority_accepts_names_and_numbers(given: object, expected: Priority) -> None:
    assert build(priority=given).priority is expected


def test_priorities_order_critical_first() -> None:
    assert sorted([Priority.LOW, Priority.CRITICAL, Priority.MEDIUM, Priority.HIGH]) == [
        Priority.CRITICAL,
        Priority.HIGH,
        Priority.MEDIUM,
        Priority.LOW,
    ]


@pytest.mark.parametrize("pool", ["research", "team-a/research", "a", "pool.v2", "x" * 253])
def test_valid_pool_names(pool: str) -> None:
    assert build(pool=pool).pool == pool


def test_a_task_survives_a_json_round_trip() -> None:
    task = build(
        priority="high",
        payload={"prompt": "fix it", "files": ["a.py"], "n": 1.5, "ok": True, "none": None},
        workflow="ns/wf",
        step="implement",
        deadline=2_000_000_000.0,
    )
    assert Task.model_validate_json(task.model_dump_json()) == task


#: The defaults a stored task leaves out (`Task.stored_json`). A reader fills in its own, so changing one
#: changes what every task already queued means, and agents of the old and the new version would read one
#: record two ways: it needs a migration, not an edit.
STORED_DEFAULTS: dict[str, Any] = {
    "workflow": "",
    "step": "",
    "priority": Priority.MEDIUM,
    "payload": None,
    "attempts": 0,
    "max_attempts": 3,
    "max_lost_leases": 10,
    "lost_lease_backoff_seconds": 1.0,
    "lease_seconds": 30.0,
    "deadline": None,
    "workspace": None,
    "fair_key": "",
    "fair_weight": 1,
    "max_concurrency": 0,
}
STORED_WORKSPACE_DEFAULTS: dict[str, Any] = {
    "action": WorkspaceAction.CHECKOUT,
    "ref": None,
    "base": None,
    "parts": [],
    "push_ref": None,
    "commit": None,
}


@pytest.mark.parametrize(
    ("model", "pinned"), [(Task, STORED_DEFAULTS), (TaskWorkspace, STORED_WORKSPACE_DEFAULTS)]
)
def test_the_defaults_a_stored_task_leaves_out_are_pinned(model: type[Any], pinned: dict[str, Any]) -> None:
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required() and name != "created_at"  # the time of creation: always stored
    }
    assert defaults == pinned


def test_a_stored_task_leaves_out_its_defaults_and_reads_back_the_same() -> None:
    plain = build(payload={"i": 1})
    assert set(json.loads(plain.stored_json())) == {"id", "pool", "payload", "created_at"}
    assert len(plain.stored_json()) < len(plain.model_dump_json()) / 2
    full = build(
        workflow="ns/wf",
        step="implement",
        priority="critical",
        payload={"prompt": "fix it"},
        attempts=2,
        max_attempts=5,
        max_lost_leases=2,
        lost_lease_backoff_seconds=0.5,
        lease_seconds=60,
        deadline=2_000_000_000.0,
        workspace=TaskWorkspace(
            url="https://git.example/repo.git", base="a" * 40, push_ref="refs/codeforge/r/s"
        ),
        fair_key="team-a",
        fair_weight=3,
        max_concurrency=4,
    )
    for task in (plain, full):
        assert Task.model_validate_json(task.stored_json()) == task
    stored_workspace = json.loads(full.stored_json())["workspace"]
    assert set(stored_workspace) == {"url", "base", "push_ref"}


def test_a_queue_reading_a_stored_task_sets_its_count_of_deliveries() -> None:
    stored = build(payload={"i": 1}).stored_json()
    assert Task.model_validate_json(stored).attempts == 0
    assert Task.model_validate_json(stored, context={"attempts": 4}).attempts == 4
    written_with_a_count = build(attempts=2).model_dump_json()
    assert Task.model_validate_json(written_with_a_count).attempts == 2
    assert Task.model_validate_json(written_with_a_count, context={"attempts": 5}).attempts == 5
    assert build(attempts=1).attempts == 1  # no context: what the producer gave
    with pytest.raises(ValidationError, match="attempts"):
        Task.model_validate_json(stored, context={"attempts": -1})


def test_a_payload_at_the_limit_is_accepted() -> None:
    overhead = len(json.dumps(""))  # the two quotes of a JSON string
    task = build(payload="x" * (MAX_PAYLOAD_BYTES - overhead))
    assert len(task.payload) == MAX_PAYLOAD_BYTES - overhead


def test_tasks_are_immutable() -> None:
    task = build()
    with pytest.raises(ValidationError, match="frozen"):
        task.attempts = 5  # type: ignore[misc]


def test_terminal_states() -> None:
    assert {s for s in TaskState if s.terminal} == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.DEAD,
        TaskState.CANCELLED,
    }


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [{1, 2}, {"when": object()}, b"raw bytes", {"x": math.nan}, [math.inf], {1j: "complex key"}],
    ids=["set", "object", "bytes", "nan", "inf", "complex-key"],
)
def test_malformed_payload_is_refused(payload: object) -> None:
    message = str(error_of(payload=payload))
    assert "payload must be JSON-serialisable" in message
    assert "dicts, lists, strings, numbers, bools, null" in message


def test_a_payload_nested_past_the_json_encoders_recursion_is_refused_with_a_message() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert "payload nests too deep for JSON: flatten it" in str(error_of(payload={"x": deep}))


def test_malformed_task_json_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Task.model_validate_json('{"id": "t-1", "pool": "research", "payload": {"unterminated": ')
    assert info.value.errors()[0]["type"] == "json_invalid"
    assert "Invalid JSON" in str(info.value)


def test_oversized_payload_is_refused_with_the_limit_and_the_fix() -> None:
    message = str(error_of(payload={"blob": "x" * MAX_PAYLOAD_BYTES}))
    assert f"over the {MAX_PAYLOAD_BYTES}-byte limit" in message
    assert "pass a reference" in message


@pytest.mark.parametrize("priority", ["urgent", "", 0, 5, -1, 2.5, None, True, "HIGHEST"])
def test_unknown_priority_is_refused_with_the_valid_choices(priority: object) -> None:
    error = error_of(priority=priority)
    assert error.errors()[0]["loc"] == ("priority",)
    message = str(error)
    assert f"unknown priority {priority!r}" in message
    assert "use one of CRITICAL (1), HIGH (2), MEDIUM (3), LOW (4)" in message


@pytest.mark.parametrize(
    ("priority", "shown"),
    [
        (10**5000, "an integer of about 5001 digits"),  # repr raised ValueError (int_max_str_digits)
        ("9" * 5000, "'9999"),  # int() raised it
        ("\u0663", "'\u0663'"),  # an Arabic-Indic 3: int() reads it, the CRD's schema does not
    ],
    ids=["huge-int", "huge-digits", "arabic-indic-3"],  # pytest's own id for the int raises
)
def test_a_huge_or_non_ascii_number_is_an_unknown_priority(priority: object, shown: str) -> None:
    with pytest.raises(ValueError, match="unknown priority") as info:
        Priority.parse(priority)
    message = str(info.value)
    assert message.startswith(f"unknown priority {shown}"), message
    assert "set_int_max_str_digits" not in message
    assert len(message) < 200


def test_priority_parse_is_the_same_check_outside_the_model() -> None:
    with pytest.raises(ValueError, match=r"unknown priority 'urgent': use one of CRITICAL \(1\)"):
        Priority.parse("urgent")


@pytest.mark.parametrize(
    "pool",
    ["Research", "", "-research", "research-", "{research}", "a/b/c", "has space", "under_score", "x" * 254],
)
def test_bad_pool_name_is_refused_with_an_example(pool: str) -> None:
    error = error_of(pool=pool)
    assert error.errors()[0]["loc"] == ("pool",)
    message = str(error)
    assert f"invalid pool name {clip(pool)}" in message
    assert "lowercase DNS-1123 name such as 'research'" in message
    with pytest.raises(ValueError, match="invalid pool name"):
        validate_pool_name(pool)


@pytest.mark.parametrize("task_id", ["", "has space", "x" * 257, "tab\there", "brace{", "ünïcode"])
def test_bad_task_id_is_refused_with_the_allowed_characters(task_id: str) -> None:
    error = error_of(id=task_id)
    assert error.errors()[0]["loc"] == ("id",)
    assert "task id must be 1-256 characters of letters, digits and ._:/@=+-" in str(error)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("max_attempts", 0, "greater than or equal to 1"),
        ("max_attempts", 1001, "less than or equal to 1000"),
        ("lease_seconds", 0, "greater than 0"),
        ("lease_seconds", 86401, "less than or equal to 86400"),
        ("attempts", -1, "greater than or equal to 0"),
        ("max_lost_leases", 0, "greater than or equal to 1"),
        ("lost_lease_backoff_seconds", -1, "greater than or equal to 0"),
    ],
)
def test_out_of_range_numbers_are_refused(field: str, value: float, fragment: str) -> None:
    error = error_of(**{field: value})
    assert error.errors()[0]["loc"] == (field,)
    assert fragment in str(error)


def test_unknown_fields_are_refused_not_dropped() -> None:
    error = error_of(priorty="high")  # a typo must not silently fall back to the default priority
    assert error.errors()[0]["loc"] == ("priorty",)
    assert "Extra inputs are not permitted" in str(error)


def test_missing_pool_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        Task(id="t-1")  # type: ignore[call-arg]
    assert info.value.errors()[0]["loc"] == ("pool",)
    assert info.value.errors()[0]["type"] == "missing"


def test_the_redis_scripts_keep_the_lost_lease_backoff_cap_and_budget_words() -> None:
    """lua/lib.lua repeats the cap and the dead-letter words of the Python side; they must not drift."""
    lib = (Path(queue_base.__file__).parent / "lua" / "lib.lua").read_text()
    assert f"LOST_BACKOFF_CAP_MS = {int(LOST_LEASE_BACKOFF_CAP_SECONDS * 1000)}" in lib
    assert f"'; {queue_base.HANDLER_BUDGET_SPENT}: failed '" in lib
    assert f"'; {queue_base.LOST_LEASE_BUDGET_SPENT}: lost '" in lib
    assert f"tonumber(info[1] or '{DEFAULT_MAX_LOST_LEASES}')" in lib
