"""The `http` handler: POST the task JSON to a URL and take the JSON response as the result.

For agents that are microservices. 2xx with a JSON body succeeds; 408, 429 and 5xx are retryable
(honouring Retry-After); other 4xx fail the task permanently with the response body's tail. A 429 raises
RateLimitedError, which pauses the pool's rate-limit key for the whole fleet when it has one.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from codeforge.api.task import Task
from codeforge_agent.handlers.base import (
    HandlerError,
    RateLimitedError,
    TaskContext,
    ensure_json,
    tail,
    task_json,
)

RETRYABLE_STATUS = frozenset({408, 425, 429})
#: A 429 without a usable Retry-After pauses for this long; a hostile one for at most the cap.
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 600.0


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds from `retry-after-ms` (OpenAI's, finer) or Retry-After (delta-seconds form only), else 0."""
    for name, scale in (("retry-after-ms", 1000.0), ("Retry-After", 1.0)):
        try:
            value = float(headers.get(name, "")) / scale
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            return min(value, MAX_RETRY_AFTER)
    return 0.0


class SessionOwner:
    """Lazily opens one aiohttp session (it must be created inside the running event loop)."""

    _session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def post_json(
    owner: SessionOwner,
    url: str,
    body: Any,
    *,
    headers: Mapping[str, str],
    timeout: float | None,
    who: str,
) -> Any:
    """POST JSON, return the decoded JSON response or raise HandlerError saying what went wrong."""
    try:
        async with owner.session().post(
            url, json=body, headers=dict(headers), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            text = await response.text(errors="replace")
            if response.status == 429:
                wait = retry_after(response.headers) or DEFAULT_RETRY_AFTER
                raise RateLimitedError(
                    f"{who}: {url} answered HTTP 429 {response.reason} (retry after {wait:g}s): "
                    f"{tail(text, 300)}",
                    retry_after=wait,
                )
            if response.status >= 300:
                retryable = response.status >= 500 or response.status in RETRYABLE_STATUS
                raise HandlerError(
                    f"{who}: {url} answered HTTP {response.status} {response.reason}: {tail(text, 1000)}",
                    retryable=retryable,
                    retry_delay=retry_after(response.headers),
                )
    except (TimeoutError, aiohttp.ClientError) as exc:
        # TimeoutError here is aiohttp's own; the loop's task timeout is a cancellation, not caught here.
        reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
        raise HandlerError(f"{who}: request to {url} failed: {reason}") from None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        raise HandlerError(
            f"{who}: {url} answered HTTP {response.status} with a body that is not JSON: {text[:200]!r}",
            retryable=False,
        ) from None


class HttpHandler(SessionOwner):
    kind = "http"

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"http handler: --http-url / CODEFORGE_HTTP_URL must be an http(s) URL, got {url!r}"
            )
        self.url = url
        self.headers = dict(headers or {})

    async def __call__(self, task: Task, context: TaskContext) -> Any:
        headers = {
            "X-CodeForge-Task-Id": task.id,
            "X-CodeForge-Attempt": str(context.attempt),
            **self.headers,
        }
        result = await post_json(
            self, self.url, task_json(task), headers=headers, timeout=context.timeout, who="http handler"
        )
        return ensure_json(result, f"http handler ({self.url})")
