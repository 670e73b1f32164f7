"""`codeforge logs WF [STEP]`: the agents' log lines about one Workflow's tasks, from their pods.

Agents log one line per event, with `workflow` (the Workflow's uid, its run id), `step` and `task_id` as
fields (`codeforge_agent.log_setup`): JSON objects (the operator's default for agent pods) or text lines
ending in `key=value` pairs. The lines of the Workflow's pools' pods are read and kept when they name it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from codeforge.cli.errors import CliError, guarded
from codeforge.cli.kube import WORKFLOWS
from codeforge.cli.options import Context, Kubeconfig, Namespace, connect

#: The agent container and its pods' pool label (`controller.agentpool.builders`; importing the controller
#: would load Kopf and LangGraph into every CLI call, so the values are repeated, and a unit test compares).
CONTAINER_NAME = "agent"
POOL_LABEL = "codeforge.ai/pool"


def _fields_of_text(line: str) -> dict[str, str]:
    return dict(re.findall(r" (workflow|step|task_id)=(\S+)", line))


def matching(lines: Iterable[str], run_id: str, step: str | None) -> list[tuple[dict[str, Any], str]]:
    """(fields, line) of the lines about this run (and step): JSON by its fields, text by key=value."""
    kept = []
    for line in lines:
        text = line.rstrip("\n")
        fields: dict[str, Any] = {}
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
                fields = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                fields = {}
        if not fields:
            fields = _fields_of_text(text)
        if fields.get("workflow") != run_id or (step is not None and fields.get("step") != step):
            continue
        kept.append((fields, text))
    return kept


def readable(fields: dict[str, Any], line: str) -> str:
    """A JSON line as `ts level msg key=value...`; a text line as it is."""
    if not line.startswith("{") or "msg" not in fields:
        return line
    rest = " ".join(
        f"{k}={v}" for k, v in fields.items() if k not in ("ts", "level", "logger", "msg", "workflow", "exc")
    )
    out = f"{fields.get('ts', '')} {str(fields.get('level', '')).upper():7} {fields['msg']} {rest}".rstrip()
    return out + ("\n" + str(fields["exc"]) if fields.get("exc") else "")


@guarded
def logs_command(
    name: Annotated[str, typer.Argument(help="The Workflow's name.", show_default=False)],
    step: Annotated[str | None, typer.Argument(help="Only this step's tasks.")] = None,
    namespace: Namespace = None,
    raw: Annotated[bool, typer.Option("--raw", help="Lines exactly as the agents wrote them.")] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """The agents' log lines about a Workflow's tasks (of one step), from the pods of its pools."""
    kube = connect(kubeconfig, context, namespace)
    obj = kube.get(WORKFLOWS, name)
    run_id = obj["metadata"]["uid"]
    steps = (obj.get("spec") or {}).get("steps") or []
    if step is not None and step not in {s.get("name") for s in steps}:
        raise CliError(
            f"Workflow {name!r} has no step {step!r} (steps: {', '.join(s.get('name', '') for s in steps)})"
        )
    pools = sorted({str(s.get("pool")) for s in steps if step is None or s.get("name") == step})
    shown = 0
    for pool in pools:
        pool_ns, pool_name = pool.split("/", 1) if "/" in pool else (obj["metadata"]["namespace"], pool)
        for pod in kube.pods(pool_ns, {POOL_LABEL: pool_name}):
            pod_name = pod["metadata"]["name"]
            try:
                text = kube.pod_log(pool_ns, pod_name, CONTAINER_NAME)
            except CliError as exc:  # a pod not started yet, or gone: say so and read the others
                typer.echo(f"{pod_name}: no log ({exc})", err=True)
                continue
            for fields, line in matching(text.splitlines(), run_id, step):
                typer.echo(f"{pod_name} {line if raw else readable(fields, line)}")
                shown += 1
    if not shown:
        typer.echo(
            f"no agent log lines about Workflow {name!r} in the pods of pool(s) {', '.join(pools)}", err=True
        )
