"""`codeforge run WORKFLOW.yaml`: run a Workflow manifest in one process, or against Redis.

Default: the memory queue, in-process agents with the handlers the file's AgentPools name, checkpoints in
memory. With `--queue redis://...`: the Redis queue, checkpoints in the same Redis (so a rerun with the same
`--workflow-id` resumes), and one `codeforge-agent` process per pool (`--no-agents` when agents run
elsewhere). `--dry-run` only validates the manifest (the same checks the operator and the CRD schema make).
Exit codes: 0 succeeded (or valid), 1 the workflow failed, 2 the manifest or an option is invalid.

Every pool a step names must be declared by an AgentPool document in the file (a typo must not "succeed"
through an echo agent); `--echo-pools` runs undeclared pools with echo agents instead. Approval steps are
decided by `--approve STEP` / `--reject STEP` (repeatable) or `--auto-approve`; a step left undecided is
asked on the terminal when stdin is one, and refused up front when it is not (it would wait forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import uuid
from asyncio import FIRST_COMPLETED
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from codeforge.api.outcome import Outcome
from codeforge.embedded.approvals import check_declared, decide_flags, spec_asks

if TYPE_CHECKING:  # LangGraph and the agent runtime load only when a workflow runs: `--help` stays fast
    from codeforge.api.approval import Decision
    from codeforge.embedded.manifest import Manifest
    from codeforge.orchestrator import WorkflowOutcome

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


class Output(StrEnum):
    text = "text"
    json = "json"


def run_command(
    manifest: Annotated[Path, typer.Argument(help="Workflow manifest (YAML; AgentPools may follow in it).")],
    queue: Annotated[
        str,
        typer.Option("--queue", help="memory:// (in-process) or redis://host:port/0, redis+cluster://..."),
    ] = "memory://",
    output: Annotated[Output, typer.Option("--output", "-o", help="text (live view) or json.")] = Output.text,
    workflow_id: Annotated[
        str | None,
        typer.Option(
            "--workflow-id", help="Run id (LangGraph thread id); reuse it to resume a run on Redis."
        ),
    ] = None,
    agents: Annotated[
        bool, typer.Option("--agents/--no-agents", help="Start the pools' agents (off: they run elsewhere).")
    ] = True,
    input_json: Annotated[
        str | None, typer.Option("--input", help="JSON that replaces the Workflow's spec.input.")
    ] = None,
    workspace_url: Annotated[
        str | None,
        typer.Option(
            "--workspace-url",
            help="Git URL that replaces spec.workspace.git.url (the repository the steps work on).",
        ),
    ] = None,
    agent_restarts: Annotated[
        int,
        typer.Option(
            "--agent-restarts",
            min=0,
            help="Restarts in a row of a pool's dying codeforge-agent process (with backoff) "
            "before giving up.",
        ),
    ] = 5,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only validate the manifest: exit 0 when valid, 2 when not.")
    ] = False,
    echo_pools: Annotated[
        bool,
        typer.Option("--echo-pools", help="Run pools the file does not declare with echo agents."),
    ] = False,
    approve: Annotated[
        list[str] | None,
        typer.Option("--approve", metavar="STEP", help="Approve this approval step (repeatable)."),
    ] = None,
    reject: Annotated[
        list[str] | None,
        typer.Option("--reject", metavar="STEP", help="Reject this approval step (repeatable)."),
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every approval step not --reject'ed.")
    ] = False,
    message: Annotated[
        str, typer.Option("--message", help="The note recorded with --approve/--reject decisions.")
    ] = "",
) -> None:
    """Run a Workflow manifest locally and print its final state; exit 1 when it fails."""
    from codeforge import event_loop
    from codeforge.embedded.manifest import ManifestError, load_manifest
    from codeforge.queue import QueueConfigError, QueueError
    from codeforge.queue.factory import check_url

    console = Console(stderr=True, highlight=False)
    try:
        loop_factory = event_loop.choose()
        check_url(queue)
        loaded = load_manifest(manifest)
        if input_json is not None:
            loaded = _with_input(loaded, input_json)
        if workspace_url is not None:
            loaded = _with_workspace_url(loaded, workspace_url)
        if agents and not echo_pools:
            check_declared(loaded)
        decisions = decide_flags(
            loaded, approve or [], reject or [], auto_approve, message, interactive=sys.stdin.isatty()
        )
    except (ManifestError, QueueConfigError, event_loop.EventLoopError) as exc:
        console.print(f"[red]codeforge run: {escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    if dry_run:
        spec = loaded.workflow.spec
        Console(highlight=False).print(
            f"{escape(str(manifest))}: valid: Workflow {escape(loaded.workflow.metadata.name)}, "
            f"{len(spec.steps)} steps, pools {escape(', '.join(sorted(loaded.pools)))}",
            soft_wrap=True,
        )
        return
    run_id = (
        workflow_id
        or loaded.workflow.metadata.uid
        or f"{loaded.workflow.metadata.name}-{uuid.uuid4().hex[:8]}"
    )
    from codeforge.orchestrator.gc_tuning import RUN_GC_THRESHOLDS, tune_gc  # loads LangGraph first

    # start-up is over (orchestrator/gc_tuning: ~1.5x the runs per second at 500 at once)
    tune_gc(thresholds=RUN_GC_THRESHOLDS)
    try:
        main = _run(loaded, queue, run_id, output, agents, agent_restarts, decisions)
        outcome = event_loop.run(main, loop_factory)
    except (QueueError, ManifestError) as exc:
        console.print(f"[red]codeforge run: {escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    except KeyboardInterrupt:
        hint = "" if queue.startswith("memory") else f"; resume it with --workflow-id {run_id}"
        console.print(f"codeforge run: interrupted{hint}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_outcome(outcome, output)
    if outcome.status != Outcome.SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)


def _with_input(loaded: Manifest, text: str) -> Manifest:
    from codeforge.api.workflow import check_input
    from codeforge.embedded.manifest import ManifestError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"--input is not JSON: {exc}") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ManifestError(f"--input is not JSON this accepts: {str(exc).split(';', 1)[0]}") from None
    except RecursionError:
        raise ManifestError("--input nests too deeply: flatten it") from None
    try:
        check_input(value, "--input")
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    spec = loaded.workflow.spec.model_copy(update={"input": value})
    return dataclasses.replace(loaded, workflow=loaded.workflow.model_copy(update={"spec": spec}))


def _with_workspace_url(loaded: Manifest, url: str) -> Manifest:
    from pydantic import ValidationError

    from codeforge.api.workspace import GitSource, WorkspaceSpec
    from codeforge.embedded.manifest import ManifestError

    current = loaded.workflow.spec.workspace
    try:
        git = GitSource(url=url) if current is None else current.git.model_copy(update={"url": url})
        GitSource.model_validate(git.model_dump())  # model_copy skips validation
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise ManifestError(f"--workspace-url: {message}") from None
    spec = loaded.workflow.spec.model_copy(update={"workspace": WorkspaceSpec(git=git)})
    return dataclasses.replace(loaded, workflow=loaded.workflow.model_copy(update={"spec": spec}))


async def _run(
    loaded: Manifest,
    url: str,
    run_id: str,
    output: Output,
    agents: bool,
    agent_restarts: int = 5,
    decisions: dict[str, Decision] | None = None,
) -> WorkflowOutcome:
    from rich.live import Live

    from codeforge.embedded.agents import AgentProcesses, InProcessAgents
    from codeforge.embedded.approvals import Prompter
    from codeforge.embedded.manifest import ManifestError
    from codeforge.embedded.progress import ProgressBoard, console_for
    from codeforge.orchestrator import ProgressEvent, WorkflowHandle, WorkflowRunner
    from codeforge.orchestrator.checkpoint import open_checkpointer
    from codeforge.queue import TaskQueue, open_queue

    spec = loaded.workflow.spec
    board = ProgressBoard(spec)
    console = console_for()
    live = output is Output.text and console.is_terminal

    def on_event(event: ProgressEvent) -> None:
        board.apply(event)
        if output is Output.text and not live and (line := board.line(event)):
            console.print(line, soft_wrap=True)

    task_queue: TaskQueue = await open_queue(url)
    processes: AgentProcesses | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            if url.startswith("memory"):
                runner = WorkflowRunner(task_queue)
                if agents:
                    in_process = InProcessAgents(task_queue, loaded.pools.values(), loaded.directory)
                    await stack.enter_async_context(in_process)
            else:
                saver = await open_checkpointer(url)
                stack.push_async_callback(saver.aclose)
                runner = WorkflowRunner(task_queue, saver)
                if agents:
                    processes = stack.enter_context(
                        AgentProcesses(
                            url,
                            loaded.pools.values(),
                            loaded.directory,
                            max_restarts=agent_restarts,
                            notify=lambda message: console.print(message, soft_wrap=True, markup=False),
                        )
                    )
            meta = loaded.workflow.metadata
            control = WorkflowHandle()
            control.approvals.replace(decisions or {})
            prompter = Prompter(control.approvals, console)
            job = asyncio.create_task(
                runner.run(
                    run_id,
                    spec,
                    emit=on_event,
                    name=meta.name,
                    namespace=meta.namespace,
                    labels=meta.labels,
                    control=control,
                )
            )
            watchers: set[asyncio.Task[Any]] = {job}
            if processes is not None:
                watchers.add(asyncio.create_task(processes.supervise()))
            view = Live(board.render(), console=console, refresh_per_second=8) if live else None
            with view or contextlib.nullcontext():
                try:
                    while not any(w.done() for w in watchers):
                        await asyncio.wait(
                            watchers, timeout=0.125 if view or spec_asks(spec) else None,
                            return_when=FIRST_COMPLETED,
                        )  # fmt: skip
                        if prompter.due():  # an approval step waits: ask on the terminal
                            await prompter.ask(view)
                        if view is not None:
                            view.update(board.render())
                finally:
                    for watcher in watchers - {job}:
                        watcher.cancel()
            if not job.done():  # the agents' supervisor gave up: stop; the run resumes with the same id
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
                gave_up = next(w for w in watchers if w is not job)
                raise ManifestError(f"{gave_up.result()}; resume the run with --workflow-id {run_id}")
            return job.result()
    finally:
        await task_queue.close()


def _print_outcome(outcome: WorkflowOutcome, output: Output) -> None:
    from rich.pretty import Pretty

    if output is Output.json:
        sys.stdout.write(json.dumps(outcome.to_dict(), indent=2, default=str) + "\n")
        return
    console = Console(highlight=False)
    colour = "green" if outcome.status == Outcome.SUCCEEDED else "red"
    console.print(f"workflow {outcome.workflow}: [{colour}]{outcome.status}[/] in {outcome.duration:.2f}s")
    if outcome.error:
        console.print(f"[red]error:[/] {outcome.error}", soft_wrap=True)
    console.print(Pretty(_final_state(outcome), expand_all=False))
    if outcome.workspace is not None:
        for line in workspace_summary(outcome.workspace, outcome.status == Outcome.SUCCEEDED):
            console.print(line, soft_wrap=True, markup=False)


def workspace_summary(workspace: dict[str, Any], succeeded: bool) -> list[str]:
    """The run's code in a few lines: where it started, the branch and commit it produced, its diffstat."""
    base, commit = str(workspace.get("base") or ""), str(workspace.get("commit") or "")
    lines = [f"workspace: {workspace.get('url')} {workspace.get('ref')} @ {base[:12]}"]
    if workspace.get("branch"):
        lines.append(f"branch: {workspace['branch']} @ {commit[:12]}")
    elif succeeded:
        lines.append(f"commit: {commit[:12]} (not published)")
    else:
        lines.append(
            f"not published (the run failed); its last commit is {commit[:12]}, each step's output is "
            "under refs/codeforge/ in the repository"
        )
    stat = workspace.get("diffstat")
    if isinstance(stat, dict):
        lines.append(
            f"diffstat against {base[:12]}: {stat.get('files', 0)} file(s) changed, "
            f"+{stat.get('insertions', 0)} -{stat.get('deletions', 0)}"
        )
    files = workspace.get("files") or []
    lines.extend(f"  {name}" for name in files)
    if workspace.get("filesOmitted"):
        lines.append(f"  ... and {workspace['filesOmitted']} more")
    return lines


def _final_state(outcome: WorkflowOutcome) -> dict[str, Any]:
    return {"results": outcome.results, "steps": [f"{h['step']}: {h['status']}" for h in outcome.history]}
