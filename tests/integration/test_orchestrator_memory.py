"""Workflows end to end on the memory queue with real in-process agents (codeforge_agent, python handler):
each routing branch, each join policy, retries, timeouts, failure routing, loops and progress events."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator

import pytest
import yaml

from codeforge.api import cel_sandbox
from codeforge.api.workflow import WorkflowSpec, parse_workflow_spec
from codeforge.embedded.agents import InProcessAgents
from codeforge.embedded.manifest import PoolSpec
from codeforge.orchestrator import EventKind, ProgressEvent, WorkflowHandle, WorkflowOutcome, WorkflowRunner
from codeforge.orchestrator import compiler as compiler_module
from codeforge.orchestrator.compiler import GRAPH_FIELDS
from codeforge.queue import TaskQueue, open_queue

FUNCS = "support.workflow_agents"


def py(pool: str, fn: str) -> PoolSpec:
    return PoolSpec(pool, "python", {"pythonFunction": f"{FUNCS}:{fn}"}, concurrency=8)


POOLS = [
    py("classify", "classify"),
    py("tag", "tag"),
    py("flaky", "flaky"),
    py("broken", "always_fail"),
    py("vote", "vote"),
    py("race", "race"),
    py("slow", "slow"),
    py("counter", "counter"),
]


@pytest.fixture
async def queue() -> AsyncIterator[TaskQueue]:
    q = await open_queue("memory://")
    async with InProcessAgents(q, POOLS):
        yield q
    await q.close()


def spec(text: str) -> WorkflowSpec:
    return parse_workflow_spec(yaml.safe_load(text))


async def run(queue: TaskQueue, text: str, events: list[ProgressEvent] | None = None) -> WorkflowOutcome:
    sink = events.append if events is not None else (lambda _: None)
    return await WorkflowRunner(queue).run("wf-test", spec(text), emit=sink)


ROUTING = """
input: {kind: %s}
steps:
  - {name: assign, pool: classify}
  - {name: research, pool: tag}
  - {name: debate, pool: tag}
  - {name: implement, pool: tag}
edges:
  - {from: assign, to: research, when: 'result.type == "research_needed"'}
  - {from: assign, to: debate, when: 'result.type == "debate_needed"'}
  - {from: assign, to: implement}
  - {from: research, to: implement}
  - {from: debate, to: implement}
"""


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("research_needed", ["assign", "research", "implement"]),
        ("debate_needed", ["assign", "debate", "implement"]),
        ("direct", ["assign", "implement"]),
    ],
)
async def test_conditional_routing_takes_each_branch(queue: TaskQueue, kind: str, path: list[str]) -> None:
    outcome = await run(queue, ROUTING % kind)
    assert outcome.status == "succeeded", outcome.error
    assert [h["step"] for h in outcome.history] == path
    assert outcome.results["implement"]["step"] == "implement"


async def test_runs_of_one_template_share_one_compiled_graph(queue: TaskQueue) -> None:
    """Real runs differ in their input (and priority, budget...), not in their graph: they share one compiled
    graph (compiling costs more than a step), and each still routes on its own input."""
    runner = WorkflowRunner(queue)
    research = spec(ROUTING % "research_needed" + "priority: high\nbudget: {maxTokens: 1000}\n")
    debate = spec(ROUTING % "debate_needed")
    assert runner.graph(research) is runner.graph(debate)
    a, b = await asyncio.gather(runner.run("wf-a", research), runner.run("wf-b", debate))
    assert [h["step"] for h in a.history] == ["assign", "research", "implement"]
    assert [h["step"] for h in b.history] == ["assign", "debate", "implement"]
    # a different graph (a step's input expression, params, an edge's condition) is compiled on its own
    step = "{name: implement, pool: tag}"
    other = spec((ROUTING % "direct").replace(step, step[:-1] + ", input: '\"own\"'}"))
    assert runner.graph(other) is not runner.graph(research)
    outcome = await runner.run("wf-c", other)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["implement"]["input"] == "own"


def test_the_compiler_reads_only_the_graph_fields_of_a_spec() -> None:
    """`graph_spec` hands the compiler the graph's fields only, the rest at their defaults: a compiler that
    read another field (a run's input, priority) would see the default, not the run's value."""
    source = inspect.getsource(compiler_module)
    read = set(re.findall(r"self\.spec\.([a-z_]+)", source))
    derived = {
        "entry_step",
        "task_pools",
        "step",
        "edges_from",
    }  # WorkflowSpec helpers over steps/edges/entry
    assert read, "the pattern no longer finds the compiler's reads: update this test"
    assert read <= GRAPH_FIELDS | derived, read - GRAPH_FIELDS - derived


async def test_join_all_keeps_results_in_index_order(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        input: {files: [a.py, b.py, c.py, d.py]}
        steps: [{name: each, pool: tag, forEach: state.input.files, input: 'item + "!"'}]
        """,
    )
    assert outcome.status == "succeeded", outcome.error
    assert [r["item"] for r in outcome.results["each"]] == ["a.py", "b.py", "c.py", "d.py"]
    assert [r["input"] for r in outcome.results["each"]] == ["a.py!", "b.py!", "c.py!", "d.py!"]


async def test_for_each_over_an_empty_list_gives_an_empty_result(queue: TaskQueue) -> None:
    outcome = await run(
        queue, "input: {files: []}\nsteps: [{name: each, pool: tag, forEach: state.input.files}]"
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["each"] == []


async def test_join_majority_picks_the_choice_of_most_parts(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        steps:
          - {name: debate, pool: vote, parallel: 3, join: majority, params: {votes: [rewrite, patch, patch]}}
          - {name: patch, pool: tag}
          - {name: rewrite, pool: tag}
        edges:
          - {from: debate, to: patch, when: 'result.choice == "patch"'}
          - {from: debate, to: rewrite, when: 'result.choice == "rewrite"'}
        """,
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["debate"]["choice"] == "patch"
    assert outcome.results["debate"]["votes"] == {"patch": 2, "rewrite": 1}
    assert [h["step"] for h in outcome.history] == ["debate", "patch"]


async def test_join_majority_fails_without_a_majority(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        "steps: [{name: debate, pool: vote, parallel: 3, join: majority, params: {votes: [a, b, c]}}]",
    )
    assert outcome.status == "failed"
    assert "no majority among 3 parts" in (outcome.error or "")


async def test_join_first_success_takes_the_fastest_and_cancels_the_rest(queue: TaskQueue) -> None:
    events: list[ProgressEvent] = []
    outcome = await run(
        queue,
        "steps: [{name: race, pool: race, parallel: 3, join: firstSuccess, params: {delays: [3, 0.05, 3]}}]",
        events,
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["race"] == {"winner": 1}
    assert outcome.duration < 2.5  # did not wait for the slow parts
    for index in (0, 2):
        record = await queue.get("race", f"wf-test/race/v1/p{index}/a0")
        assert record is not None
        assert record.state.value == "cancelled"


async def test_retry_then_success(queue: TaskQueue) -> None:
    events: list[ProgressEvent] = []
    outcome = await run(
        queue, "steps: [{name: work, pool: flaky, retries: {max: 2, backoffSeconds: 0.01}}]", events
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["work"]["task"] == "wf-test/work/v1/p0/a1"
    assert outcome.history[0]["attempts"] == 2
    failed = [e for e in events if e.kind is EventKind.ATTEMPT_FAILED]
    assert [(e.attempt, e.message) for e in failed] == [(0, "flaky: first attempt fails")]


async def test_a_failed_step_fails_the_workflow_with_its_message(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        steps: [{name: a, pool: broken, params: {why: disk full}}, {name: b, pool: tag}]
        edges: [{from: a, to: b}]
        """,
    )
    assert outcome.status == "failed"
    assert outcome.error == "step 'a' failed: always_fail: disk full"
    assert [h["step"] for h in outcome.history] == ["a"]


async def test_an_edge_can_route_a_failure(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        steps: [{name: a, pool: broken}, {name: recover, pool: tag}, {name: b, pool: tag}]
        edges:
          - {from: a, to: recover, when: 'step.status == "failed"'}
          - {from: a, to: b}
        """,
    )
    assert outcome.status == "succeeded", outcome.error
    assert [h["step"] for h in outcome.history] == ["a", "recover"]


async def test_a_condition_over_the_runs_data_is_stopped_at_its_limit_and_other_runs_go_on(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `when` quadratic in the run's own input (60,000 items: minutes in CEL, which holds the GIL) fails its
    Workflow naming the edge; a Workflow started alongside it finishes meanwhile."""
    monkeypatch.setattr(cel_sandbox._worker, "seconds", 3.0)
    hostile = spec(
        """
        steps: [{name: a, pool: tag}, {name: b, pool: tag}]
        edges: [{from: a, to: b, when: 'state.input.xs.exists(x, state.input.xs.exists(y, x == y + 100))'}]
        """
    ).model_copy(update={"input": {"xs": [i % 10 for i in range(60_000)]}})
    chain = """
        steps: [{name: a, pool: tag}, {name: b, pool: tag}, {name: c, pool: tag}]
        edges: [{from: a, to: b}, {from: b, to: c}]
    """
    runner = WorkflowRunner(queue)
    bad = asyncio.create_task(runner.run("wf-hostile", hostile, emit=lambda _: None))
    await asyncio.sleep(0.2)  # the hostile run reaches its edge first
    good = await asyncio.wait_for(runner.run("wf-good", spec(chain), emit=lambda _: None), 30)
    assert good.status == "succeeded", good.error
    assert not bad.done()  # still at its limit: the loop was not held by the evaluation
    outcome = await asyncio.wait_for(bad, 30)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.startswith("spec.edges[0].when: condition 'state.input.xs.exists(x, ")
    assert outcome.error.endswith("was not evaluated: it ran longer than 3 s and was stopped")


async def test_step_timeout_fails_the_attempt_and_cancels_its_task(queue: TaskQueue) -> None:
    outcome = await run(queue, "steps: [{name: s, pool: slow, timeoutSeconds: 0.3, params: {seconds: 5}}]")
    assert outcome.status == "failed"
    assert "timed out after 0.3s" in (outcome.error or "")
    assert outcome.duration < 3
    record = await queue.get("slow", "wf-test/s/v1/p0/a0")
    assert record is not None
    # The task ends either way: cancelled by the orchestrator's timeout, or failed by the agent at the task's
    # deadline (the same instant here); what matters is that it does not keep running.
    assert record.state.value in ("cancelled", "failed")


async def test_workflow_timeout(queue: TaskQueue) -> None:
    outcome = await run(queue, "timeoutSeconds: 0.4\nsteps: [{name: s, pool: slow, params: {seconds: 5}}]")
    assert outcome.status == "failed"
    assert outcome.error == "workflow timed out after 0.4s (spec.timeoutSeconds)"
    assert outcome.duration < 3


async def test_a_loop_runs_until_its_condition_fails(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        steps: [{name: loop, pool: counter}]
        edges: [{from: loop, to: loop, when: 'result.n < 3'}]
        """,
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["loop"] == {"n": 3}
    assert [h["visit"] for h in outcome.history] == [1, 2, 3]


async def test_max_step_runs_bounds_a_loop(queue: TaskQueue) -> None:
    outcome = await run(
        queue,
        """
        maxStepRuns: 4
        steps: [{name: loop, pool: counter}]
        edges: [{from: loop, to: loop, when: 'result.n < 100'}]
        """,
    )
    assert outcome.status == "failed"
    assert "spec.maxStepRuns" in (outcome.error or "")
    assert len(outcome.history) == 4


async def test_progress_events_describe_the_run(queue: TaskQueue) -> None:
    events: list[ProgressEvent] = []
    outcome = await run(queue, ROUTING % "direct", events)
    assert outcome.status == "succeeded"
    per_task = (EventKind.TASK_DISPATCHED, EventKind.TASK_FINISHED)
    kinds = [(e.kind.value, e.step) for e in events if e.kind not in per_task]
    assert kinds == [
        ("workflow_started", ""),
        ("step_started", "assign"),
        ("step_finished", "assign"),
        ("step_started", "implement"),
        ("step_finished", "implement"),
        ("workflow_finished", ""),
    ]
    finished = [e for e in events if e.kind is EventKind.STEP_FINISHED]
    assert all(e.status == "succeeded" and e.duration is not None and e.duration >= 0 for e in finished)
    # One per task, for the metrics: how long an agent held it, and end -> this run woken (none for a
    # task that ended before its node waited on it: enqueued as its step was routed to, the in-process
    # agent may finish it first).
    tasks = [e for e in events if e.kind is EventKind.TASK_FINISHED]
    assert [(e.step, e.status) for e in tasks] == [("assign", "succeeded"), ("implement", "succeeded")]
    assert all(e.duration is not None and 0 <= e.duration < 5 for e in tasks)
    assert all(e.latency is None or 0 <= e.latency < 1 for e in tasks)
    # And per dispatch: the step became ready (the run began, the previous step joined) -> enqueued.
    dispatched = [e for e in events if e.kind is EventKind.TASK_DISPATCHED]
    assert [e.step for e in dispatched] == ["assign", "implement"]
    assert all(e.latency is not None and 0 <= e.latency < 1 for e in dispatched)


async def test_running_a_finished_workflow_again_returns_its_outcome(queue: TaskQueue) -> None:
    runner = WorkflowRunner(queue)
    text = ROUTING % "direct"
    first = await runner.run("wf-again", spec(text))
    events: list[ProgressEvent] = []
    second = await runner.run("wf-again", spec(text), emit=events.append)
    assert second.results == first.results
    assert second.resumed
    assert not [e for e in events if e.kind is EventKind.TASK_DISPATCHED]


async def test_a_suspended_workflow_dispatches_nothing_until_resumed(queue: TaskQueue) -> None:
    control = WorkflowHandle()
    job = asyncio.create_task(
        WorkflowRunner(queue).run(
            "wf-s", spec("suspend: true\nsteps: [{name: a, pool: tag}]"), control=control
        )
    )
    await asyncio.sleep(0.3)
    assert await queue.get("tag", "wf-s/a/v1/p0/a0") is None
    assert not job.done()
    control.resume()
    outcome = await asyncio.wait_for(job, 10)
    assert outcome.status == "succeeded", outcome.error


async def test_an_oversized_payload_fails_the_step_with_a_hint(queue: TaskQueue) -> None:
    # spec.input itself is capped at the payload limit, so the payload grows in the `input` expression
    blob = "x" * 300_000
    text = f"input: {{blob: {blob}}}\nsteps: [{{name: a, pool: tag, input: '[input.blob, input.blob]'}}]"
    outcome = await run(queue, text)
    assert outcome.status == "failed"
    assert "over the 524288-byte limit" in (outcome.error or "")
    assert "`input` expression" in (outcome.error or "")


async def test_cancel_stops_the_run_and_its_tasks(queue: TaskQueue) -> None:
    control = WorkflowHandle()
    runner = WorkflowRunner(queue)
    job = asyncio.create_task(
        runner.run("wf-c", spec("steps: [{name: s, pool: slow, params: {seconds: 5}}]"), control=control)
    )
    for _ in range(100):
        record = await queue.get("slow", "wf-c/s/v1/p0/a0")
        if record is not None and record.state.value == "running":
            break
        await asyncio.sleep(0.02)
    control.cancel("the Workflow was deleted")
    outcome = await asyncio.wait_for(job, 5)
    assert outcome.status == "cancelled"
    assert outcome.error == "cancelled: the Workflow was deleted"
    record = await queue.get("slow", "wf-c/s/v1/p0/a0")
    assert record is not None
    assert record.state.value == "cancelled"
    await runner.forget("wf-c")
    assert await runner.checkpointer.aget_tuple({"configurable": {"thread_id": "wf-c"}}) is None


async def test_a_checkpoint_shell_is_not_taken_for_a_finished_run(queue: TaskQueue) -> None:
    """A process killed between writing a run's first checkpoint and its writes leaves default channel values
    and nothing to run next; the run starts afresh instead of "succeeding" with no results."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.memory import InMemorySaver

    saver = InMemorySaver()
    shell = empty_checkpoint()
    shell["channel_values"] = {"results": {}, "parts": {}, "visits": {}, "history": [], "usage": {}}
    shell["channel_versions"] = {k: saver.get_next_version(None, None) for k in shell["channel_values"]}
    config = {"configurable": {"thread_id": "wf-shell", "checkpoint_ns": ""}}
    await saver.aput(config, shell, {"source": "input", "step": -1}, shell["channel_versions"])  # type: ignore[arg-type]
    outcome = await WorkflowRunner(queue, saver).run("wf-shell", spec("steps: [{name: a, pool: tag}]"))
    assert outcome.status == "succeeded", outcome.error
    assert outcome.results["a"]["step"] == "a"
    assert not outcome.resumed
