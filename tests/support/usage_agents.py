"""Agents that report usage, as handlers do (README, "Rate limits and budgets"): the `python` handler
returns it in its result; run as a program, this module is a `command` handler printing it on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from codeforge.api.task import Task


def spend(task: Task) -> dict[str, Any]:
    """Uses the tokens and cost the payload names (a step's params)."""
    payload = task.payload if isinstance(task.payload, dict) else {}
    return {
        "step": task.step,
        "usage": {
            "input_tokens": int(payload.get("tokens_in", 0)),
            "output_tokens": int(payload.get("tokens_out", 0)),
            "cost": float(payload.get("cost", 0.0)),
        },
    }


if __name__ == "__main__":
    task = json.load(sys.stdin)
    payload = task["payload"] if isinstance(task["payload"], dict) else {}
    # OpenAI's names work too: the orchestrator reads prompt/completion tokens like input/output.
    usage = {"prompt_tokens": payload.get("tokens_in", 0), "completion_tokens": payload.get("tokens_out", 0)}
    print(json.dumps({"step": task["step"], "usage": {**usage, "cost": payload.get("cost", 0.0)}}))
