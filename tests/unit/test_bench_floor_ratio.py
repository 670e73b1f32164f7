"""`codeforge bench queue` holds each codeforge latency row to its floor (issue 15: p99 within 1.5x): the
same durability mode's LPUSH/BRPOP, at the same consumer count, from the same run."""

from __future__ import annotations

from codeforge.benchmarks.queue_bench import Row, compare_to_floors, pair_up


def _row(system: str, consumers: int, p99: float | None, scenario: str = "latency") -> Row:
    return Row(system=system, version="-", consumers=consumers, scenario=scenario, p99_ms=p99)


def test_each_mode_is_held_to_its_own_floor_at_the_same_consumer_count() -> None:
    rows = [
        _row("raw-fsync", 1, 0.5),
        _row("raw-fsync", 3, 0.8),
        _row("codeforge-fsync", 1, 0.9),
        _row("codeforge-fsync", 3, 1.0),
        _row("codeforge-fsync", 100, 1.0),  # no floor at 100 in this run
        _row("codeforge-fsync", 1, 0.2, scenario="throughput"),
        _row("raw", 1, 0.1),  # another mode's floor is never used
    ]
    compare_to_floors(rows)
    assert [r.p99_vs_floor for r in rows] == [None, None, 1.8, 1.25, None, None, None]


def test_replicated_prefers_the_floor_that_confirms_its_pop_and_falls_back_to_the_plain_one() -> None:
    both = [
        _row("raw-replicated", 1, 0.5),
        _row("raw-replicated-confirmed", 1, 1.0),
        _row("codeforge-replicated", 1, 1.5),
    ]
    compare_to_floors(both)
    assert both[2].p99_vs_floor == 1.5
    plain = [_row("raw-replicated", 1, 0.5), _row("codeforge-replicated", 1, 1.5)]
    compare_to_floors(plain)
    assert plain[1].p99_vs_floor == 3.0


def test_a_mode_without_a_floor_and_a_floor_without_samples_give_no_ratio() -> None:
    rows = [_row("raw", 1, None), _row("codeforge", 1, 1.0), _row("codeforge-fast", 1, 1.0)]
    compare_to_floors(rows)
    assert [r.p99_vs_floor for r in rows] == [None, None, None]


def test_a_system_is_paired_with_the_first_floor_of_its_mode_the_run_selected() -> None:
    assert pair_up(["codeforge", "raw", "celery"]) == {"codeforge": "raw"}
    assert pair_up(["raw-fsync", "codeforge-fsync", "codeforge", "codeforge-fast"]) == {
        "codeforge-fsync": "raw-fsync"
    }
    both = ["codeforge-replicated", "raw-replicated", "raw-replicated-confirmed"]
    assert pair_up(both) == {"codeforge-replicated": "raw-replicated-confirmed"}
    assert pair_up(["codeforge-replicated", "raw-replicated"]) == {"codeforge-replicated": "raw-replicated"}
    # a floor without its system, or a system whose floor another mode's, runs alone
    assert pair_up(["raw", "codeforge-fsync", "dramatiq"]) == {}
