"""Deterministic agent functions for workflow tests, run by the real `python` handler of codeforge_agent."""

from __future__ import annotations

import time
from typing import Any

from codeforge.api.task import Task
from codeforge_agent.handlers import HandlerError


def _payload(task: Task) -> dict[str, Any]:
    assert isinstance(task.payload, dict)
    return task.payload


def classify(task: Task) -> dict[str, Any]:
    """Route on the workflow input's `kind`."""
    return {"type": _payload(task)["input"]["input"]["kind"]}


def tag(task: Task) -> dict[str, Any]:
    """Echo which step ran, and what it was given."""
    payload = _payload(task)
    return {"step": payload["step"], "item": payload.get("item"), "input": payload.get("input")}


def flaky(task: Task) -> dict[str, Any]:
    """Fails its first attempt (task id ends in /a0) permanently; later attempts succeed."""
    if task.id.endswith("/a0"):
        raise HandlerError("flaky: first attempt fails", retryable=False)
    return {"ok": True, "task": task.id}


def always_fail(task: Task) -> None:
    raise HandlerError("always_fail: " + str(_payload(task).get("why", "no reason")), retryable=False)


def vote(task: Task) -> dict[str, Any]:
    """Part i votes votes[i] (from the step params)."""
    payload = _payload(task)
    return {"choice": payload["votes"][payload["index"]]}


def race(task: Task) -> dict[str, Any]:
    """Part i sleeps delays[i] seconds: the fastest wins a firstSuccess join."""
    payload = _payload(task)
    time.sleep(payload["delays"][payload["index"]])
    return {"winner": payload["index"]}


def slow(task: Task) -> dict[str, Any]:
    time.sleep(float(_payload(task).get("seconds", 1.0)))
    return {"slept": True}


def counter(task: Task) -> dict[str, Any]:
    """Reports how many times the step ran so far (from the results it sees), for loop tests."""
    payload = _payload(task)
    previous = (payload["input"]["results"].get("loop") or {}).get("n", 0)
    return {"n": previous + 1}


def logged_sleep(task: Task) -> dict[str, Any]:
    """Append the task id to `payload.log` (one line per execution), then sleep `payload.seconds`."""
    payload = _payload(task)
    with open(payload["log"], "a") as log:
        log.write(task.id + "\n")
    time.sleep(float(payload.get("seconds", 0)))
    return {"ran": task.id, "n": (payload.get("input") or {}).get("input", {}).get("n")}


def square(task: Task) -> dict[str, Any]:
    """Square the workflow's input `n` (plus the fan-out index when there is one)."""
    payload = _payload(task)
    n = payload["input"]["input"]["n"] + payload.get("index", 0)
    return {"value": n * n}


def total(task: Task) -> dict[str, Any]:
    results = _payload(task)["input"]["results"]
    return {"n": _payload(task)["input"]["input"]["n"], "sum": sum(r["value"] for r in results["fan"])}


def timed_sleep(task: Task) -> dict[str, Any]:
    """Sleep `payload.seconds`, then append "task-id start end" (Unix times) to `payload.log`."""
    payload = _payload(task)
    start = time.time()
    time.sleep(float(payload.get("seconds", 0)))
    with open(payload["log"], "a") as log:
        log.write(f"{task.id} {start:.6f} {time.time():.6f}\n")
    return {"ran": task.id}


def slow_flaky(task: Task) -> dict[str, Any]:
    """Fails its first attempt at once; later attempts sleep `payload.seconds`, then succeed."""
    if task.id.endswith("/a0"):
        raise HandlerError("slow_flaky: first attempt fails", retryable=False)
    time.sleep(float(_payload(task).get("seconds", 1.0)))
    return {"ok": True, "task": task.id}
