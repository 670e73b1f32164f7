"""The garbage-collector settings of a process that runs Workflows (`orchestrator/gc_tuning.py`): applied once
per process (the operator, `codeforge run`) or for a block (the benchmark harness), and the time of the
collections' pauses measured."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from codeforge.orchestrator import gc_tuning


@pytest.fixture
def untuned(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process whose collector was not tuned yet; put back as it was afterwards."""
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    monkeypatch.setattr(gc_tuning, "_tuned", False)
    gc.unfreeze()  # an operator run in this process by an earlier test froze its objects
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.callbacks[:] = callbacks


def pauses(generation: int) -> tuple[float, float]:
    """How many collections of the generation were measured, and their total seconds."""
    name, labels = "codeforge_operator_gc_pause_seconds", {"generation": str(generation)}
    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


@pytest.mark.usefixtures("untuned")
def test_start_up_objects_are_frozen_and_the_thresholds_set() -> None:
    assert gc.get_freeze_count() == 0
    assert gc_tuning.tune_gc({}) is True
    assert gc.get_freeze_count() > 1000  # the imports' objects
    assert gc.get_threshold() == gc_tuning.GC_THRESHOLDS


@pytest.mark.usefixtures("untuned")
def test_tuned_once_per_process() -> None:
    assert gc_tuning.tune_gc({}) is True
    frozen, callbacks = gc.get_freeze_count(), len(gc.callbacks)
    assert gc_tuning.tune_gc({}) is False  # a second operator in this process (tests) changes nothing
    assert (gc.get_freeze_count(), len(gc.callbacks)) == (frozen, callbacks)


@pytest.mark.usefixtures("untuned")
def test_python_defaults_on_request() -> None:
    threshold = gc.get_threshold()
    assert gc_tuning.tune_gc({gc_tuning.TUNING_ENV: "off"}) is False
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


@pytest.mark.usefixtures("untuned")
@pytest.mark.parametrize("tuning", ["", "off"])
def test_each_collections_pause_is_measured(tuning: str) -> None:
    gc_tuning.tune_gc({gc_tuning.TUNING_ENV: tuning})
    count, total = pauses(2)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    gc.collect()
    gc.collect()
    after_count, after_total = pauses(2)
    assert after_count == count + 2
    assert after_total > total


@pytest.mark.usefixtures("untuned")
def test_a_block_gets_the_settings_and_python_gets_its_own_back() -> None:
    threshold = gc.get_threshold()
    with gc_tuning.gc_tuned():
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == gc_tuning.RUN_GC_THRESHOLDS  # the harness runs codeforge as `run` does
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


@pytest.mark.usefixtures("untuned")
@pytest.mark.parametrize("tuning", ["", "off"])
def test_codeforge_run_tunes_its_process(tuning: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from codeforge.cli import _register, app

    _register()
    monkeypatch.setenv(gc_tuning.TUNING_ENV, tuning)
    threshold = gc.get_threshold()
    hello = Path(__file__).resolve().parents[2] / "examples/workflows/hello-world.yaml"
    result = CliRunner().invoke(app, ["run", str(hello), "-o", "json"])
    assert result.exit_code == 0, result.output
    if tuning == "off":
        assert gc.get_threshold() == threshold
    else:
        assert gc.get_threshold() == gc_tuning.RUN_GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000


@pytest.mark.usefixtures("untuned")
def test_the_operators_middle_collections_follow_every_second_young_one() -> None:
    """What keeps the operator's middle-generation pauses short: it never gathers more than two young
    collections' survivors (s4-s15's thresholds let it gather ten)."""
    gc_tuning.tune_gc({})
    young, middle = pauses(0)[0], pauses(1)[0]
    kept: list[list[object]] = [[] for _ in range(gc_tuning.GC_THRESHOLDS[0] * 6)]  # they stay alive
    young, middle = pauses(0)[0] - young, pauses(1)[0] - middle
    del kept  # alive until the collections were counted
    assert middle >= 1
    assert young <= 2 * middle + 2  # (young, young, middle), repeated
