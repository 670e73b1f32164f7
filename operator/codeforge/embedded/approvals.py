"""`codeforge run`'s checks before a run starts (declared pools, approval decisions) and its approval prompt.

Kept light (no LangGraph): `codeforge run --help` imports this module.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from codeforge.api.approval import MAX_DECISION_MESSAGE, Decision

if TYPE_CHECKING:
    from rich.console import Console

    from codeforge.api.workflow import WorkflowSpec
    from codeforge.embedded.manifest import Manifest
    from codeforge.orchestrator.approvals import ApprovalBox


def check_declared(loaded: Manifest) -> None:
    """Refuse steps whose pool no AgentPool document declares: such a typo used to run as an echo agent and
    "succeed". `--echo-pools` asks for echo agents on purpose."""
    from codeforge.embedded.manifest import ManifestError

    missing = {name for name, pool in loaded.pools.items() if not pool.declared}
    lines = [
        f"  spec.steps[{i}].pool: {step.pool!r} is not declared in the file: add an AgentPool document "
        "(kind: AgentPool, metadata.name, spec.handler), or pass --echo-pools to run it with echo agents"
        for i, step in enumerate(loaded.workflow.spec.steps)
        if step.pool in missing
    ]
    if lines:
        raise ManifestError("\n".join([f"{loaded.source}:", *lines[:10]]))


def spec_asks(spec: WorkflowSpec) -> bool:
    return any(step.is_approval for step in spec.steps)


def approver() -> str:
    """Who decides in a local run: the operating-system user."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "local user"


def decide_flags(
    loaded: Manifest,
    approve: Iterable[str],
    reject: Iterable[str],
    auto_approve: bool,
    message: str,
    *,
    interactive: bool,
) -> dict[str, Decision]:
    """Decisions from `--approve/--reject/--auto-approve`; a ManifestError naming the flag when one names no
    approval step, or when a step stays undecided and there is no terminal to ask on."""
    from codeforge.embedded.manifest import ManifestError

    steps = [s.name for s in loaded.workflow.spec.steps if s.is_approval]
    known = ", ".join(steps) or "(none)"
    if len(message) > MAX_DECISION_MESSAGE:
        raise ManifestError(f"--message: longer than {MAX_DECISION_MESSAGE} characters")
    by = approver()
    decisions: dict[str, Decision] = {}
    for flag, names, approved in (("--approve", approve, True), ("--reject", reject, False)):
        for name in names:
            if name not in steps:
                raise ManifestError(
                    f"{flag} {name[:64]!r}: no approval step has that name (approval steps: {known})"
                )
            if name in decisions and decisions[name].approved != approved:
                raise ManifestError(f"step {name!r} is both --approve'd and --reject'ed: pick one")
            decisions[name] = Decision(approved, by, message)
    for name in steps:
        if name not in decisions and auto_approve:
            decisions[name] = Decision(True, by, message or "--auto-approve")
    undecided = [name for name in steps if name not in decisions]
    if undecided and not interactive:
        first = undecided[0]
        raise ManifestError(
            f"step {first!r} is an approval step and stdin is not a terminal to ask on: decide it with "
            f"--approve {first}, --reject {first} or --auto-approve"
        )
    return decisions


class Prompter:
    """Asks on the terminal for the decision of a waiting approval step (the live view pauses meanwhile)."""

    def __init__(self, box: ApprovalBox, console: Console) -> None:
        self.box = box
        self.console = console

    def due(self) -> bool:
        return any(self.box.get(step, visit) is None for step, visit in self.box.waiting.items())

    async def ask(self, view: Any = None) -> None:
        if view is not None:
            view.stop()
        try:
            for step, visit in list(self.box.waiting.items()):
                if self.box.get(step, visit) is not None:
                    continue
                answer = await asyncio.to_thread(
                    self.console.input, f"approval step {step} (visit {visit}): approve? [y/n] "
                )
                note = await asyncio.to_thread(self.console.input, "message (optional): ")
                approved = answer.strip().lower() in ("y", "yes")
                decision = Decision(approved, approver(), note[:MAX_DECISION_MESSAGE], visit=visit)
                self.box.decide(step, decision)
        finally:
            if view is not None:
                view.start()
