"""`codeforge.api.cel_sandbox`: data-driven CEL runs in a real worker process, with CEL's values and errors,
and one that overruns its time, memory or result limit is stopped without holding the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codeforge.api import cel_sandbox
from codeforge.api.cel_check import data_driven, tokenize
from codeforge.api.cel_sandbox import EvaluationLimit
from codeforge.api.workflow import compile_cel
from codeforge.orchestrator.conditions import ConditionError, edge_matches, evaluate, for_each_items

#: Never true, so both comprehensions walk every pair: 60,000^2 steps, minutes in the evaluator.
QUADRATIC = "input.xs.exists(x, input.xs.exists(y, x == y + 100))"
BIG: dict[str, Any] = {"input": {"xs": [i % 10 for i in range(60_000)]}}


@pytest.fixture
def worker() -> Iterator[cel_sandbox._Worker]:
    """A worker of its own with short limits (the module's one keeps the product's)."""
    w = cel_sandbox._Worker(seconds=0.5, memory=512 * 2**20, result_bytes=64 * 1024)
    yield w
    w.stop()


@pytest.mark.parametrize(
    ("expression", "driven"),
    [
        ("result.files.exists(f, f.startsWith('src/'))", True),
        ("xs.map(x, x * 2)", True),
        ("xs.filter(x, x > 1).size() > 0", True),
        ("xs . all ( x , x > 0 )", True),
        (" + ".join(["s"] * 10), True),
        (" + ".join(["s"] * 9), False),
        ("result.type == 'exists' && size(xs) > 2", False),
        ("'a.map(x, x)' == s", False),  # a macro's name inside a string is text
        ("result.branch.matches('^fix/')", True),  # the package compiles the regex on every call
    ],
)
def test_data_driven_means_a_comprehension_or_many_concatenations(expression: str, driven: bool) -> None:
    assert data_driven(tokenize(expression)) is driven


@pytest.mark.parametrize(
    ("expression", "variables"),
    [
        ("xs.map(x, x * 2)", {"xs": [1, 2, 3]}),
        ("xs.filter(x, x > 1)", {"xs": [1, 2, 3]}),
        ("m.exists(k, m[k] == 'b')", {"m": {"a": "b"}}),
        ("xs.exists_one(x, x == 2) && xs.all(x, x > 0)", {"xs": [1, 2, 3]}),
        (" + ".join(["s"] * 10), {"s": "ab"}),
        ("xs.map(x, timestamp('2026-01-01T00:00:00Z'))", {"xs": [1]}),
        ("xs.map(x, duration('90s'))", {"xs": [1]}),
        ("xs.map(x, b'\\x00')", {"xs": [1]}),
    ],
)
async def test_the_sandbox_gives_the_value_cel_gives_in_process(
    expression: str, variables: dict[str, Any]
) -> None:
    names = frozenset(compile_cel(expression).variables())
    assert await cel_sandbox.evaluate(expression, variables, names) == compile_cel(expression).execute(
        variables
    )


@pytest.mark.parametrize(
    ("expression", "variables", "error"),
    [
        ("xs.exists(x, x.missing)", {"xs": [{}]}, KeyError),
        ("xs.map(x, 1 / x)", {"xs": [0]}, ZeroDivisionError),
        ("xs.map(x, x + 'a')", {"xs": [1]}, TypeError),
        ("xs.map(x, int(x))", {"xs": ["z"]}, RuntimeError),
    ],
)
def test_errors_come_back_as_the_same_exceptions(
    worker: cel_sandbox._Worker, expression: str, variables: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        compile_cel(expression).execute(variables)
    with pytest.raises(error):
        worker.evaluate(expression, variables)


async def test_a_long_evaluation_is_stopped_and_the_loop_runs_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cel_sandbox._worker, "seconds", 0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(EvaluationLimit, match=r"longer than 0\.5 s"):
            await evaluate(QUADRATIC, BIG)
    finally:
        task.cancel()
    took = time.monotonic() - started
    assert took < 10  # in process this runs for minutes
    assert ticks >= 10  # the loop kept turning while the worker ran (0.5 s at 10 ms a tick: ~50)
    # The killed worker is replaced on the next evaluation.
    assert await evaluate("input.xs.exists(x, x == 3)", BIG) is True


def test_memory_is_bounded(worker: cel_sandbox._Worker) -> None:
    worker.seconds = 30  # the memory limit stops it first
    with pytest.raises(EvaluationLimit, match="out of memory"):  # 1,000 new strings of 2 MB
        worker.evaluate("xs.map(x, s + s)", {"xs": list(range(1000)), "s": "x" * 2**20})
    assert worker.evaluate("xs.map(x, x)", {"xs": [1]}) == [1]
    assert worker.started == 2


def test_a_value_over_the_result_limit_is_refused(worker: cel_sandbox._Worker) -> None:
    with pytest.raises(EvaluationLimit, match="over the limit of 65,536"):
        worker.evaluate("xs.map(x, s)", {"xs": list(range(100)), "s": "x" * 1000})
    assert worker.started == 1  # an answered limit keeps the worker


def test_a_worker_killed_from_outside_is_replaced(worker: cel_sandbox._Worker) -> None:
    assert worker.evaluate("xs.map(x, x)", {"xs": [1]}) == [1]
    proc = worker._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert worker.evaluate("xs.map(x, x)", {"xs": [2]}) == [2]
    assert worker.started == 2


async def test_an_edge_stopped_at_the_limit_is_an_error_naming_it_not_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cel_sandbox._worker, "seconds", 0.3)
    with pytest.raises(
        ConditionError, match=r"spec\.edges\[2\]\.when: condition .* was not evaluated: it ran"
    ):
        await edge_matches(QUADRATIC, BIG, "spec.edges[2].when")
    with pytest.raises(ConditionError, match=r"spec\.steps\[1\]\.forEach: .* cannot be evaluated: it ran"):
        await for_each_items(
            "input.xs.filter(x, input.xs.exists(y, x == y + 100))", BIG, "spec.steps[1].forEach"
        )
    # An ordinary evaluation error on an edge is still just false.
    assert await edge_matches("input.xs.exists(x, x.missing)", BIG, "spec.edges[0].when") is False
    assert await edge_matches("input.xs.exists(x, 1 / (x - x) > 0)", BIG, "spec.edges[0].when") is False


async def test_only_the_variables_the_expression_reads_are_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    real = cel_sandbox.evaluate_blocking

    def spy(expression: str, variables: dict[str, Any]) -> Any:
        sent.append(variables)
        return real(expression, variables)

    monkeypatch.setattr(cel_sandbox, "evaluate_blocking", spy)
    variables = {"result": {"files": ["src/a.py"]}, "state": {"input": "x" * 100_000}, "input": "x"}
    assert await evaluate("result.files.exists(f, f.startsWith('src/'))", variables) is True
    assert sent == [{"result": {"files": ["src/a.py"]}}]


def test_a_worker_that_cannot_start_is_an_evaluation_limit(
    worker: cel_sandbox._Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(EvaluationLimit, match="the CEL worker process could not start"):
        worker.evaluate("xs.map(x, x)", {"xs": [1]})


def test_the_worker_is_the_first_the_kernel_kills_when_memory_runs_out(worker: cel_sandbox._Worker) -> None:
    assert worker.evaluate("xs.map(x, x)", {"xs": [1]}) == [1]
    assert worker._proc is not None
    assert Path(f"/proc/{worker._proc.pid}/oom_score_adj").read_text().strip() == "1000"
