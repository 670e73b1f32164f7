"""Which Redis the CLI opens for dead letters, and how it says so when it cannot.

In order: `--redis-url`, then CODEFORGE_REDIS_URL, then the operator's own CODEFORGE_QUEUE_URL (read from
its Deployment, labelled `app.kubernetes.io/part-of=codeforge, app.kubernetes.io/component=operator`).
That last one is an in-cluster address; from a laptop, forward a port and pass its URL:

    kubectl -n codeforge port-forward svc/codeforge-redis 6379:6379 &
    CODEFORGE_REDIS_URL=redis://127.0.0.1:6379 codeforge dlq list research

The password comes from the URL or CODEFORGE_REDIS_PASSWORD / CODEFORGE_REDIS_PASSWORD_FILE, never
from the cluster's Secret; every message names the URL without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Final, TypeVar

import typer

from codeforge.cli.errors import CliError
from codeforge.cli.kube import Kube
from codeforge.queue import QueueError, TaskQueue, open_queue

T = TypeVar("T")
URL_ENV: Final = "CODEFORGE_REDIS_URL"
OPERATOR_LABELS: Final = {"app.kubernetes.io/part-of": "codeforge", "app.kubernetes.io/component": "operator"}
#: A CLI call gives up on an unreachable Redis after this long (the operator's clients wait 30 s).
CONNECT_SECONDS: Final = 3.0

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar=URL_ENV,
        help="The queue's Redis (default: the operator's CODEFORGE_QUEUE_URL); see `codeforge dlq --help`.",
    ),
]


def operator_queue_url(kube: Kube) -> str | None:
    """CODEFORGE_QUEUE_URL of the operator's Deployment, if one is found and readable."""
    try:
        deployments = kube.deployments(OPERATOR_LABELS)
    except CliError:
        return None  # no right to list Deployments: the user passes --redis-url
    for deployment in deployments:
        for container in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for env in container.get("env") or []:
                if env.get("name") == "CODEFORGE_QUEUE_URL" and env.get("value"):
                    return str(env["value"])
    return None


def resolve_url(flag: str | None, kube: Kube | None) -> str:
    if flag:
        return flag
    found = operator_queue_url(kube) if kube is not None else None
    if found is None or found.startswith("memory://"):
        raise CliError(
            "no Redis URL: pass --redis-url or set CODEFORGE_REDIS_URL (from outside the cluster, "
            "kubectl port-forward the Redis Service first)"
        )
    return found


def with_queue(url: str, work: Callable[[TaskQueue], Awaitable[T]]) -> T:
    """Open the queue, run `work`, close it; an unreachable Redis is one line naming its (safe) URL."""

    async def run() -> T:
        try:
            # The memory backend (tests, `memory://`) takes no retry option: it never waits for anything.
            options = {} if url.startswith("memory://") else {"retry_seconds": CONNECT_SECONDS}
            queue = await asyncio.wait_for(open_queue(url, **options), CONNECT_SECONDS * 3)
        except TimeoutError:
            raise CliError(f"Redis at {safe(url)} did not answer within {CONNECT_SECONDS * 3:g}s") from None
        try:
            return await work(queue)
        finally:
            await queue.close()

    try:
        return asyncio.run(run())
    except QueueError as exc:
        message = str(exc)
        if safe(url) not in message:
            message = f"Redis at {safe(url)}: {message}"
        raise CliError(message) from None


def safe(url: str) -> str:
    """The URL without its password."""
    from codeforge.redis.url import redact

    return redact(url)
