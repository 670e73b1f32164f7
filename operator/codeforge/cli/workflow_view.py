"""What `codeforge list | get | watch` print for Workflows: pure functions of the objects (and a clock)."""

from __future__ import annotations

import time
from typing import Any

from codeforge.cli import render

JSON = dict[str, Any]
FINISHED = ("Succeeded", "Failed", "Cancelled")
#: Conditions the phase already says; the others (Degraded, Invalid, ...) are shown.
QUIET_CONDITIONS = ("Ready", "Succeeded", "Running", "Finished")
ICONS = {"Succeeded": "✔", "Failed": "✖", "Cancelled": "⊘", "Running": "●", "Retrying": "↻", "Pending": "◷"}


def status(obj: JSON) -> JSON:
    value = obj.get("status")
    return value if isinstance(value, dict) else {}


def phase(obj: JSON) -> str:
    return str(status(obj).get("phase") or "Pending")


def list_table(objs: list[JSON], *, all_namespaces: bool, wide: bool, now: float | None = None) -> str:
    headers = ["NAME", "PHASE", "PROGRESS", "AGE", "DURATION"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["STEP", "MESSAGE"]
    rows = []
    for obj in objs:
        meta, st = obj["metadata"], status(obj)
        row = [
            meta["name"],
            phase(obj),
            st.get("progress") or "-",
            render.age(meta.get("creationTimestamp"), now),
            render.between(st.get("startTime"), st.get("completionTime"), now),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        if wide:
            row += [st.get("currentStep") or "-", render.clip(st.get("message"), 80)]
        rows.append(row)
    return render.table(headers, rows)


def _successors(spec: JSON) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for edge in spec.get("edges") or []:
        target = str(edge.get("to", ""))
        out.setdefault(str(edge.get("from", "")), []).append(target + ("?" if edge.get("when") else ""))
    return out


def step_rows(obj: JSON, now: float | None = None) -> list[list[Any]]:
    """One row per step of the spec, in its order, with what the status knows of its latest visit."""
    spec, st = obj.get("spec") or {}, status(obj)
    by_name = {s.get("name"): s for s in st.get("steps") or [] if isinstance(s, dict)}
    results: JSON = st["result"] if isinstance(st.get("result"), dict) else {}
    successors = _successors(spec)
    rows = []
    for step in spec.get("steps") or []:
        name = str(step.get("name", ""))
        seen: JSON = by_name.get(name) or {}
        step_phase = str(seen.get("phase") or "Pending")
        visits = int(seen.get("visits") or 0)
        attempts = seen.get("attempts")
        started = render.parse_time(seen.get("startTime"))
        rows.append(
            [
                f"{ICONS.get(step_phase, ' ')} {name}",
                step.get("pool") or seen.get("pool") or "-",
                step_phase,
                "-" if attempts is None else (f"{attempts} (visit {visits})" if visits > 1 else attempts),
                seen.get("agent") or "-",
                "-" if started is None else time.strftime("%H:%M:%S", time.gmtime(started)),
                render.between(seen.get("startTime"), seen.get("finishTime"), now) if started else "-",
                (seen.get("commit") or "-")[:10],
                ", ".join(successors.get(name, [])) or "-",
                render.summary(results.get(name), 40) if name in results else "-",
                _note(seen) or "-",
            ]
        )
    return rows


def _note(seen: JSON) -> str:
    """The step's message; an approval step's decision (and who made it) before it."""
    note = render.clip(seen.get("message"), 60)
    approval = seen.get("approval")
    if isinstance(approval, dict) and approval.get("decision"):
        decided = f"{approval['decision']} by {approval.get('by') or '?'}"
        note = render.clip(f"{decided}: {note}" if note else decided, 80)
    return note


STEP_HEADERS = [
    "STEP",
    "POOL",
    "PHASE",
    "ATTEMPTS",
    "AGENT",
    "STARTED",
    "DURATION",
    "COMMIT",
    "NEXT",
    "RESULT",
    "MESSAGE",
]


def describe(obj: JSON, now: float | None = None) -> str:
    """`codeforge get`: the Workflow's summary, then its graph, one row per step."""
    meta, st = obj["metadata"], status(obj)
    created = meta.get("creationTimestamp")
    lines = [
        f"Name:        {meta['name']}",
        f"Namespace:   {meta.get('namespace', '')}",
        f"Phase:       {phase(obj)}" + (" (suspended)" if (obj.get("spec") or {}).get("suspend") else ""),
        f"Progress:    {st.get('progress') or '-'}",
        f"Created:     {created or '-'} ({render.age(created, now)} ago)",
    ]
    if st.get("startTime"):
        lines.append(f"Started:     {st['startTime']}")
    if st.get("completionTime"):
        lines.append(f"Finished:    {st['completionTime']}")
    lines.append(f"Duration:    {render.between(st.get('startTime'), st.get('completionTime'), now)}")
    if st.get("message"):
        lines.append(f"Message:     {render.clip(st['message'], 200)}")
    for cond in st.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") not in QUIET_CONDITIONS:
            lines.append(
                f"Condition:   {cond.get('type')} ({cond.get('reason')}): "
                + render.clip(cond.get("message"), 160)
            )
    workspace = st.get("workspace") or {}
    if workspace:
        where = workspace.get("branch") or workspace.get("ref") or ""
        lines.append(
            f"Workspace:   {workspace.get('url', '')} {where} @ {(workspace.get('commit') or '-')[:12]}"
        )
    ref = st.get("resultRef")
    if ref:
        lines.append(f"Result:      in Redis ({ref.get('redisKey')}, {ref.get('sizeBytes')} bytes)")
    lines += ["", render.table(STEP_HEADERS, step_rows(obj, now))]
    return "\n".join(lines)


def changes(before: JSON | None, after: JSON) -> list[str]:
    """What changed between two versions, one plain line each (`codeforge watch` when not on a terminal)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    name = after["metadata"]["name"]
    out = []
    old_steps = {s.get("name"): s for s in status(before or {}).get("steps") or []}
    for step in status(after).get("steps") or []:
        old = old_steps.get(step.get("name")) or {}
        key = ("phase", "attempts", "visits")
        if any(old.get(k) != step.get(k) for k in key):
            detail = f"attempt {step.get('attempts', 0)}"
            if step.get("agent"):
                detail += f", agent {step['agent']}"
            if step.get("message") and step.get("phase") in ("Failed", "Retrying"):
                detail += f": {render.clip(step['message'], 120)}"
            out.append(f"{stamp} {name} step {step.get('name')} {step.get('phase')} ({detail})")
    old_phase = phase(before) if before else None
    if phase(after) != old_phase or status(after).get("progress") != status(before or {}).get("progress"):
        line = f"{stamp} {name} {phase(after)} {status(after).get('progress') or ''}".rstrip()
        if phase(after) in FINISHED:
            line += (
                f" in {render.between(status(after).get('startTime'), status(after).get('completionTime'))}"
            )
            if status(after).get("message"):
                line += f": {render.clip(status(after)['message'], 160)}"
        out.append(line)
    return out
