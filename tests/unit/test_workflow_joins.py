"""Pure parts of the orchestrator: join policies, fan-in reducer, task ids, checkpoint key hash tags."""

from __future__ import annotations

from typing import Any

from codeforge.api.workflow import Step
from codeforge.orchestrator import task_id
from codeforge.orchestrator.checkpoint.keys import ThreadKeys, thread_tag
from codeforge.orchestrator.joins import join
from codeforge.orchestrator.state import merge_parts


def parts(*outcomes: tuple[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        str(i): {
            "index": i,
            "status": status,
            "result": value,
            "error": None if status == "succeeded" else value,
        }
        for i, (status, value) in enumerate(outcomes)
    }


def step(**kwargs: Any) -> Step:
    return Step.model_validate({"name": "s", "pool": "p", **kwargs})


def test_join_all_orders_results_and_fails_on_any_failure() -> None:
    fan = step(parallel=2)
    ok = join(
        fan,
        {
            "1": {"index": 1, "status": "succeeded", "result": "b"},
            "0": {"index": 0, "status": "succeeded", "result": "a"},
        },
    )
    assert (ok.status, ok.result) == ("succeeded", ["a", "b"])
    bad = join(fan, parts(("succeeded", "a"), ("failed", "boom")))
    assert bad.status == "failed"
    assert bad.error == "part 1: boom"


def test_join_of_a_single_step_is_its_result() -> None:
    assert join(step(), parts(("succeeded", {"x": 1}))).result == {"x": 1}


def test_first_success_takes_the_earliest_finisher() -> None:
    fan = step(parallel=3, join="firstSuccess")
    outcome = {
        "0": {"index": 0, "status": "cancelled", "error": "another part succeeded first"},
        "1": {"index": 1, "status": "succeeded", "result": "late", "finished": 20.0},
        "2": {"index": 2, "status": "succeeded", "result": "early", "finished": 10.0},
    }
    assert join(fan, outcome).result == "early"
    assert (
        join(fan, parts(("failed", "x"), ("failed", "y"))).error == "no part succeeded: part 0: x; part 1: y"
    )


def test_majority_counts_failed_parts_in_the_total() -> None:
    fan = step(parallel=3, join="majority")
    won = join(fan, parts(("succeeded", {"choice": "a"}), ("succeeded", {"choice": "a"}), ("failed", "x")))
    assert won.result["choice"] == "a"
    assert won.result["votes"] == {"a": 2}
    lost = join(fan, parts(("succeeded", {"choice": "a"}), ("failed", "x"), ("failed", "y")))
    assert lost.status == "failed"
    assert lost.error is not None
    assert lost.error.startswith("no majority among 3 parts on 'choice': votes {'a': 1}")
    bools = join(
        fan, parts(("succeeded", {"choice": True}), ("succeeded", {"choice": True}), ("succeeded", {}))
    )
    assert bools.result["choice"] == "true"


def test_fan_in_reducer_merges_parts_and_drops_joined_visits() -> None:
    merged = merge_parts({"s#1": {"0": {"a": 1}}}, {"s#1": {"1": {"b": 2}}})
    assert merged == {"s#1": {"0": {"a": 1}, "1": {"b": 2}}}
    assert merge_parts(merged, {"s#1": None}) == {}


def test_task_ids_are_deterministic_and_valid() -> None:
    assert task_id("5f1c-uid", "debate", 2, 1, 0) == "5f1c-uid/debate/v2/p1/a0"


def test_checkpoint_keys_of_a_thread_share_one_hash_tag() -> None:
    keys = ThreadKeys("cf:cp", "wf-1")
    names = [
        keys.namespaces,
        keys.writes_keys,
        keys.records(""),
        keys.index("a:b"),
        keys.blobs(""),
        keys.writes("", "c1"),
    ]
    assert all(name.startswith("cf:cp:{wf-1}:") for name in names)
    # a brace in the id would end the tag early: such ids are hashed instead
    tag = thread_tag("weird{id}")
    assert "{" not in tag
    assert "}" not in tag
    assert tag == thread_tag("weird{id}")
