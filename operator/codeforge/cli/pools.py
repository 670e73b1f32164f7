"""`codeforge pools` and `codeforge dlq list | show | requeue | purge`: AgentPools and their dead letters.

`pools` reads the AgentPools' status (the operator writes queue depth, in-flight, busy/idle agents and
dead letters there). `dlq` talks to the queue's Redis (see `redis_access` for which one); destructive
verbs ask first, and refuse without a terminal unless `--yes` says so.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from codeforge.api import agentpool
from codeforge.api.agentpool import pool_queue_name
from codeforge.api.task import DeadLetter, QueueStats
from codeforge.cli import render
from codeforge.cli.errors import CliError, guarded
from codeforge.cli.kube import WORKFLOWS, Kube
from codeforge.cli.options import (
    AllNamespaces,
    Context,
    Kubeconfig,
    Namespace,
    Output,
    OutputFormat,
    Yes,
    connect,
    shown_as_list,
)
from codeforge.cli.redis_access import RedisUrl, resolve_url, with_queue
from codeforge.queue import TaskQueue
from codeforge.queue.base import MAX_DEAD_LETTERS_PAGE, MAX_PURGE_IDS

Pool = Annotated[str, typer.Argument(help="The AgentPool's name.", show_default=False)]
TaskIds = Annotated[list[str] | None, typer.Argument(help="Task ids (none: every dead letter of the pool).")]

dlq_app = typer.Typer(
    name="dlq",
    help="Dead letters of an AgentPool's queue: tasks that spent their retry budget. "
    "Redis: --redis-url, else CODEFORGE_REDIS_URL, else the operator's CODEFORGE_QUEUE_URL.",
    no_args_is_help=True,
)


@guarded
def pools_command(
    namespace: Namespace = None,
    all_namespaces: AllNamespaces = False,
    output: Output = OutputFormat.TABLE,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", envvar="CODEFORGE_REDIS_URL", help="Also show dead letters expired (Redis)."
        ),
    ] = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """AgentPools: replicas, queue depth, in flight, busy and idle agents, dead letters."""
    kube = connect(kubeconfig, context, namespace)
    objs = kube.list_objects(agentpool.PLURAL, None if all_namespaces else kube.namespace)
    if shown_as_list(objs, output, "AgentPools", None if all_namespaces else kube.namespace):
        return
    expired: dict[str, int] | None = None
    if redis_url:
        names = [pool_queue_name(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs]

        async def read(queue: TaskQueue) -> dict[str, int]:
            return {name: (await queue.stats(name)).dead_expired for name in names}

        expired = with_queue(redis_url, read)
    typer.echo(pools_table(objs, all_namespaces, output is OutputFormat.WIDE, expired))


def pools_table(
    objs: list[dict[str, Any]], all_namespaces: bool, wide: bool, expired: dict[str, int] | None
) -> str:
    headers = ["NAME", "ROLE", "PHASE", "READY", "QUEUED", "HELD", "IN-FLIGHT", "BUSY", "IDLE", "DEAD"]
    headers.append("OLDEST")
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    if expired is not None:
        headers.append("EXPIRED")
    if wide:
        headers += ["DELAYED", "MIN", "MAX", "AGE"]
    rows = []
    for obj in objs:
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        row: list[Any] = [
            meta["name"],
            spec.get("role", "-"),
            st.get("phase") or "Pending",
            f"{st.get('readyReplicas', 0)}/{st.get('desiredReplicas', 0)}",
            st.get("queued", 0),
            st.get("heldBack", 0),
            st.get("inFlight", 0),
            st.get("busyAgents"),
            st.get("idleAgents"),
            st.get("dead", 0),
            render.span(st.get("oldestTaskAgeSeconds")) if st.get("oldestTaskAgeSeconds") else "-",
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        if expired is not None:
            row.append(expired.get(pool_queue_name(meta["namespace"], meta["name"]), 0))
        if wide:
            scaling = spec.get("autoscaling") or {}
            row += [st.get("delayed", 0), scaling.get("minReplicas", "-"), scaling.get("maxReplicas", "-")]
            row.append(render.age(meta.get("creationTimestamp")))
        rows.append(row)
    return render.table(headers, rows)


def _queue_of(kube: Kube, pool: str, tasks: list[str] | None = None) -> str:
    if tasks and len(tasks) > MAX_PURGE_IDS:
        raise CliError(f"name at most {MAX_PURGE_IDS} tasks at once (got {len(tasks)}), or none for all")
    kube.get(agentpool.PLURAL, pool)  # a typo gets "AgentPool 'x' not found", not an empty list
    return pool_queue_name(kube.namespace, pool)


def _workflow_names(kube: Kube) -> dict[str, str]:
    """Workflow uid -> name in this namespace (task ids and dead letters carry the uid)."""
    return {o["metadata"]["uid"]: o["metadata"]["name"] for o in kube.list_objects(WORKFLOWS, kube.namespace)}


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"refusing without confirmation ({question.rstrip('?')}): stdin is not a terminal; pass --yes"
        )
    if not typer.confirm(question, default=False):
        raise CliError("cancelled: nothing changed")


@dlq_app.command("list")
@guarded
def dlq_list(
    pool: Pool,
    namespace: Namespace = None,
    output: Output = OutputFormat.TABLE,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_DEAD_LETTERS_PAGE, help="Show at most this many.")
    ] = 100,
    redis_url: RedisUrl = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Dead letters of a pool, oldest first, with their step, attempts, age and last error."""
    kube = connect(kubeconfig, context, namespace)
    queue_name = _queue_of(kube, pool)

    async def read(queue: TaskQueue) -> tuple[list[DeadLetter], QueueStats]:
        return await queue.dead_letters(queue_name, limit), await queue.stats(queue_name)

    letters, stats = with_queue(resolve_url(redis_url, kube), read)
    if output in (OutputFormat.JSON, OutputFormat.YAML):
        render.emit([letter.model_dump(mode="json") for letter in letters], render.Output(output.value))
        return
    names = _workflow_names(kube)
    now = time.time()
    rows = []
    for letter in letters:
        task = letter.task
        rows.append(
            [
                letter.id,
                names.get(task.workflow, task.workflow) if task else "-",
                task.step if task else "-",
                letter.attempts,
                render.age(letter.died_at, now),
                render.clip(letter.error, 200 if output is OutputFormat.WIDE else 70),
            ]
        )
    if rows:
        typer.echo(render.table(["TASK", "WORKFLOW", "STEP", "ATTEMPTS", "DIED", "ERROR"], rows))
    typer.echo(
        f"{stats.dead} dead letter(s) in pool {queue_name}"
        + (f" (showing {len(letters)})" if len(letters) < stats.dead else "")
        + f"; {stats.dead_expired} removed after the retention so far",
        err=True,
    )


@dlq_app.command("show")
@guarded
def dlq_show(
    pool: Pool,
    task: Annotated[str, typer.Argument(help="The dead task's id (from `codeforge dlq list`).")],
    namespace: Namespace = None,
    output: Output = OutputFormat.YAML,
    redis_url: RedisUrl = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """One dead letter in full: its task (payload included), error, budgets spent and time of death."""
    kube = connect(kubeconfig, context, namespace)
    queue_name = _queue_of(kube, pool)

    async def read(queue: TaskQueue) -> DeadLetter | None:
        return await queue.dead_letter(queue_name, task)

    letter = with_queue(resolve_url(redis_url, kube), read)
    if letter is None:
        raise CliError(
            f"no dead letter {task!r} in pool {queue_name} (codeforge dlq list {pool} -n {kube.namespace})"
        )
    data = letter.model_dump(mode="json")
    data["diedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.died_at))
    data.pop("died_at", None)
    fmt = render.Output.JSON if output is OutputFormat.JSON else render.Output.YAML
    render.emit(data, fmt)


@dlq_app.command("requeue")
@guarded
def dlq_requeue(
    pool: Pool,
    tasks: TaskIds = None,
    namespace: Namespace = None,
    yes: Yes = False,
    redis_url: RedisUrl = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Put dead letters back in the queue with fresh retry budgets (all of the pool's when none is named)."""
    target = _dlq_target(pool, tasks, namespace, redis_url, kubeconfig, context)
    if target is None:
        return
    queue_name, url, count = target
    if not tasks:
        confirm(f"Requeue all {count} dead letter(s) of pool {queue_name}?", yes)

    async def requeue(queue: TaskQueue) -> tuple[int, list[str]]:
        ids = list(tasks or [])
        if not ids:
            ids = [letter.id for letter in await queue.dead_letters(queue_name, MAX_DEAD_LETTERS_PAGE)]
        missing = [task_id for task_id in ids if not await queue.requeue_dead(queue_name, task_id)]
        return len(ids) - len(missing), missing

    done, missing = with_queue(url, requeue)
    typer.echo(f"requeued {done} task(s) in pool {queue_name}")
    if missing:
        raise CliError(f"not in the dead-letter queue of {queue_name}: {', '.join(missing[:10])}")


@dlq_app.command("purge")
@guarded
def dlq_purge(
    pool: Pool,
    tasks: TaskIds = None,
    namespace: Namespace = None,
    yes: Yes = False,
    redis_url: RedisUrl = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete dead letters for good (all of the pool's when none is named); asks first."""
    target = _dlq_target(pool, tasks, namespace, redis_url, kubeconfig, context)
    if target is None:
        return
    queue_name, url, count = target
    what = f"{count} named dead letter(s)" if tasks else f"all {count} dead letter(s)"
    confirm(f"Delete {what} of pool {queue_name} for good?", yes)

    async def purge(queue: TaskQueue) -> int:
        if tasks:
            return await queue.purge_dead(queue_name, tasks)
        removed = 0
        while removed < count:  # what was confirmed: the dead letters there were, oldest first
            page = await queue.dead_letters(queue_name, min(count - removed, MAX_DEAD_LETTERS_PAGE))
            if not page:
                break
            removed += await queue.purge_dead(queue_name, [letter.id for letter in page])
        return removed

    removed = with_queue(url, purge)
    typer.echo(f"purged {removed} dead letter(s) from pool {queue_name}")
    if tasks and removed < len(tasks):
        raise CliError(f"{len(tasks) - removed} of the named tasks were not in the dead-letter queue")


def _dlq_target(
    pool: str,
    tasks: list[str] | None,
    namespace: str | None,
    redis_url: str | None,
    kubeconfig: str | None,
    context: str | None,
) -> tuple[str, str, int] | None:
    """(queue name, Redis URL, how many tasks the command is about); None when the pool has no dead letter."""
    kube = connect(kubeconfig, context, namespace)
    queue_name = _queue_of(kube, pool, tasks)
    url = resolve_url(redis_url, kube)
    if tasks:
        return queue_name, url, len(tasks)

    async def count(queue: TaskQueue) -> int:
        return (await queue.stats(queue_name)).dead

    dead = with_queue(url, count)
    if not dead:
        typer.echo(f"no dead letters in pool {queue_name}")
        return None
    return queue_name, url, dead


def register(app: typer.Typer) -> None:
    app.command("pools")(pools_command)
    app.add_typer(dlq_app, name="dlq")
