"""`codeforge list | get | watch | submit | retry | suspend | resume | stop | terminate`: Workflows.

Every command reads and writes the Workflow objects only, through what the operator already honours:
`spec.suspend` (suspend, resume), `spec.shutdown` (stop: running steps finish, nothing new starts;
terminate: running tasks are cancelled) and the `codeforge.ai/retry` annotation (retry a Failed Workflow
from its failed step). `watch` follows the API server's watch stream (no polling) and redraws in place on a
terminal; elsewhere it prints one plain line per change, so CI logs stay readable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from codeforge.api import agentpool
from codeforge.cli import render, workflow_view
from codeforge.cli.errors import EXIT_WORKFLOW_FAILED, CliError, guarded
from codeforge.cli.kube import WORKFLOW_KIND, WORKFLOWS, Kube
from codeforge.cli.options import (
    AllNamespaces,
    Context,
    Kubeconfig,
    Namespace,
    Output,
    OutputFormat,
    connect,
    shown_as_list,
)

WF = WORKFLOWS
Name = Annotated[str, typer.Argument(help="The Workflow's name.", show_default=False)]
Timeout = Annotated[
    float, typer.Option("--timeout", help="Give up watching after this many seconds (0: never).", min=0)
]
#: A watch request lasts at most this long; the loop re-reads the object and opens the next one.
WATCH_WINDOW = 60
CLEAR = "\x1b[H\x1b[2J"
#: `controller.workflow.retry.RETRY_ANNOTATION` (repeated: the controller loads Kopf; a unit test compares).
RETRY_ANNOTATION = "codeforge.ai/retry"


@guarded
def list_command(
    namespace: Namespace = None,
    all_namespaces: AllNamespaces = False,
    output: Output = OutputFormat.TABLE,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Workflows with their phase, progress, age and duration."""
    kube = connect(kubeconfig, context, namespace)
    objs = kube.list_objects(WF, None if all_namespaces else kube.namespace)
    if shown_as_list(objs, output, "Workflows", None if all_namespaces else kube.namespace):
        return
    typer.echo(
        workflow_view.list_table(objs, all_namespaces=all_namespaces, wide=output is OutputFormat.WIDE)
    )


@guarded
def get_command(
    name: Name,
    namespace: Namespace = None,
    output: Output = OutputFormat.TABLE,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """A Workflow's graph: each step's phase, attempts, agent, times, result, commit and message."""
    kube = connect(kubeconfig, context, namespace)
    obj = kube.get(WF, name)
    if output in (OutputFormat.JSON, OutputFormat.YAML):
        render.emit(obj, render.Output(output.value))
        return
    typer.echo(workflow_view.describe(obj))


@guarded
def watch_command(
    name: Name,
    namespace: Namespace = None,
    timeout: Timeout = 0,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Follow a Workflow until it ends: redrawn in place on a terminal, one line per change otherwise.
    Exits 0 when it Succeeded, 3 when it Failed or was Cancelled."""
    kube = connect(kubeconfig, context, namespace)
    follow(kube, name, kube.namespace, timeout)


def follow(kube: Kube, name: str, namespace: str, timeout: float) -> None:
    obj = kube.get(WF, name, namespace)
    interactive = sys.stdout.isatty()
    deadline = time.monotonic() + timeout if timeout else None
    previous: dict[str, Any] | None = None

    def show(current: dict[str, Any]) -> None:
        nonlocal previous
        if interactive:
            typer.echo(CLEAR + workflow_view.describe(current), nl=True)
        else:
            for line in workflow_view.changes(previous, current):
                typer.echo(line)
        previous = current

    show(obj)
    while workflow_view.phase(obj) not in workflow_view.FINISHED:
        window = WATCH_WINDOW
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(
                    f"gave up after {timeout:g}s: Workflow {name!r} is still {workflow_view.phase(obj)} "
                    f"(codeforge watch {name} -n {namespace} to go on)"
                )
            window = max(1, min(window, int(left) + 1))
        for current in kube.watch(WF, name, namespace, obj["metadata"].get("resourceVersion", ""), window):
            obj = current
            show(obj)
            if workflow_view.phase(obj) in workflow_view.FINISHED:
                break
        else:  # the window closed (or the server ended the stream): read the latest version, go on
            obj = kube.get(WF, name, namespace)
            if obj["metadata"].get("resourceVersion") != (previous or {}).get("metadata", {}).get(
                "resourceVersion"
            ):
                show(obj)
    if workflow_view.phase(obj) != "Succeeded":
        raise typer.Exit(EXIT_WORKFLOW_FAILED)


@guarded
def submit_command(
    file: Annotated[Path, typer.Argument(help="A manifest: one Workflow, and AgentPools if it needs them.")],
    namespace: Namespace = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the run until it ends.")] = True,
    timeout: Timeout = 0,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Apply a manifest (its AgentPools server-side, then create its Workflow) and watch the run."""
    from codeforge.embedded.manifest import ManifestError, load_manifest, load_yaml

    try:
        load_manifest(file)  # the whole file checked here, with the same messages as `codeforge run`
    except ManifestError as exc:
        raise CliError(str(exc)) from None
    documents = load_yaml(file.read_text(encoding="utf-8"))
    kube = connect(kubeconfig, context, namespace)
    created = None
    for doc in documents:
        target = doc.get("metadata", {}).get("namespace") or kube.namespace
        if doc.get("kind") == agentpool.KIND:
            kube.apply(agentpool.PLURAL, doc, target)
            typer.echo(f"agentpool.{agentpool.GROUP}/{doc['metadata']['name']} applied", err=True)
    for doc in documents:
        if doc.get("kind") == WORKFLOW_KIND:
            target = doc.get("metadata", {}).get("namespace") or kube.namespace
            created = kube.create(WF, doc, target)
            typer.echo(f"workflow.{agentpool.GROUP}/{created['metadata']['name']} created", err=True)
    assert created is not None  # load_manifest insists on exactly one Workflow
    if watch:
        follow(kube, created["metadata"]["name"], created["metadata"]["namespace"], timeout)


@guarded
def retry_command(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Retry a Failed Workflow from its failed step (the steps that succeeded keep their results)."""
    kube = connect(kubeconfig, context, namespace)
    obj = kube.get(WF, name)
    current = workflow_view.phase(obj)
    if current != "Failed":
        raise CliError(f"Workflow {name!r} is {current}: only a Failed Workflow can be retried")
    token = str(time.time_ns())
    kube.patch(WF, name, {"metadata": {"annotations": {RETRY_ANNOTATION: token}}})
    typer.echo(f"workflow.{agentpool.GROUP}/{name} retry requested ({RETRY_ANNOTATION}={token})")


def _set_suspend(name: str, suspend: bool, kube: Kube) -> None:
    obj = kube.get(WF, name)
    current = workflow_view.phase(obj)
    if current in workflow_view.FINISHED:
        raise CliError(f"Workflow {name!r} is {current}: a finished Workflow cannot be suspended or resumed")
    if bool((obj.get("spec") or {}).get("suspend")) == suspend:
        typer.echo(f"workflow.{agentpool.GROUP}/{name} already {'suspended' if suspend else 'running'}")
        return
    kube.patch(WF, name, {"spec": {"suspend": suspend}})
    typer.echo(f"workflow.{agentpool.GROUP}/{name} {'suspended' if suspend else 'resumed'}")


@guarded
def suspend_command(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Pause a Workflow: no new task is dispatched; running tasks finish."""
    _set_suspend(name, True, connect(kubeconfig, context, namespace))


@guarded
def resume_command(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Resume a suspended Workflow."""
    _set_suspend(name, False, connect(kubeconfig, context, namespace))


def _shutdown(name: str, mode: str, kube: Kube) -> None:
    """Set spec.shutdown (one way: Stop may become Terminate; the CRD refuses anything else)."""
    obj = kube.get(WF, name)
    current = workflow_view.phase(obj)
    verb = "stopped" if mode == "Stop" else "terminated"
    if current in workflow_view.FINISHED:
        raise CliError(f"Workflow {name!r} is {current}: a finished Workflow cannot be {verb}")
    asked = (obj.get("spec") or {}).get("shutdown")
    if asked == mode or asked == "Terminate":
        typer.echo(
            f"workflow.{agentpool.GROUP}/{name} already {'stopping' if asked == 'Stop' else 'terminating'}"
        )
        return
    kube.patch(WF, name, {"spec": {"shutdown": mode}})
    what = "running steps finish, nothing new starts" if mode == "Stop" else "running tasks are cancelled"
    typer.echo(
        f"workflow.{agentpool.GROUP}/{name} {'stopping' if mode == 'Stop' else 'terminating'} ({what})"
    )


@guarded
def stop_command(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Stop a Workflow: nothing new is dispatched, its tasks no agent has taken yet are withdrawn from the
    queue, the running ones finish, then it ends (Cancelled, reason Stopped)."""
    _shutdown(name, "Stop", connect(kubeconfig, context, namespace))


@guarded
def terminate_command(
    name: Name, namespace: Namespace = None, kubeconfig: Kubeconfig = None, context: Context = None
) -> None:
    """Terminate a Workflow now: its running tasks are cancelled (Cancelled, reason Terminated)."""
    _shutdown(name, "Terminate", connect(kubeconfig, context, namespace))


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("get")(get_command)
    app.command("watch")(watch_command)
    app.command("submit")(submit_command)
    app.command("retry")(retry_command)
    app.command("suspend")(suspend_command)
    app.command("resume")(resume_command)
    app.command("stop")(stop_command)
    app.command("terminate")(terminate_command)
