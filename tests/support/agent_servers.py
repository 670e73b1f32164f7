"""Local HTTP servers for the http and openai handler tests (nothing leaves the host)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve an app on a free local port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def task_service(recorded: Recorded) -> web.Application:
    """A "microservice agent": /run answers with the payload reversed; /status/<code> answers that code."""

    async def run(request: web.Request) -> web.Response:
        body = await request.json()
        recorded.requests.append(body)
        recorded.headers.append(dict(request.headers))
        return web.json_response({"reversed": str(body["payload"]["text"])[::-1]})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code} on purpose", headers={"Retry-After": "2"})

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="<html>not json</html>")

    app = web.Application()
    app.router.add_post("/run", run)
    app.router.add_post("/status/{code}", status)
    app.router.add_post("/text", text)
    return app


def completion(body: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> web.Response:
    """A chat completion answering the last message upper-cased, with the usage given."""
    return web.json_response(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": str(body["messages"][-1]["content"]).upper()},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def fake_openai(recorded: Recorded, api_key: str = "sk-test") -> web.Application:
    """An OpenAI-compatible /v1/chat/completions that echoes the last user message, upper-cased."""

    async def completions(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        body = await request.json()
        recorded.requests.append(body)
        return completion(body, 3, 3)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@dataclass
class ProviderLimits:
    """The provider's own limits, as a sliding window: at most `requests` calls and `tokens` tokens in any
    `window` seconds (0: no limit); over them it answers 429 with `Retry-After: retry_after`."""

    requests: int = 0
    tokens: int = 0
    window: float = 1.0
    retry_after: int = 1
    latency: float = 0.0  # seconds "the model" takes per call


@dataclass
class ProviderLog:
    """What a rate-limited provider saw, on the test's monotonic clock."""

    accepted: list[tuple[float, int, str]] = field(default_factory=list)  # (time, tokens, api key)
    refused: list[tuple[float, str]] = field(default_factory=list)  # (time, api key)

    def in_window(self, start: float, end: float) -> list[tuple[float, int, str]]:
        return [a for a in self.accepted if start <= a[0] < end]


def token_counts(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of a request: a token per 4 characters of the messages (at least one),
    and the request's max_tokens (default 10) as the completion; deterministic, so tests can plan them."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    return max(1, chars // 4), int(body.get("max_tokens") or 10)


def limited_openai(
    limits: ProviderLimits, log: ProviderLog, api_keys: tuple[str, ...] = ("sk-test",)
) -> web.Application:
    """An OpenAI-compatible /v1/chat/completions that enforces its own rate limits like a real provider:
    a sliding window over requests and tokens, 429 with Retry-After and OpenAI's error body when over."""
    recent: deque[tuple[float, int]] = deque()  # accepted (time, tokens) within the window
    lock = asyncio.Lock()

    async def completions(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key not in api_keys:
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        body = await request.json()
        prompt, completion_tokens = token_counts(body)
        async with lock:
            now = time.monotonic()
            while recent and recent[0][0] <= now - limits.window:
                recent.popleft()
            over_requests = limits.requests and len(recent) + 1 > limits.requests
            tokens = prompt + completion_tokens
            over_tokens = limits.tokens and sum(t for _, t in recent) + tokens > limits.tokens
            if over_requests or over_tokens:
                log.refused.append((now, key))
                kind = "requests" if over_requests else "tokens"
                return web.json_response(
                    {
                        "error": {
                            "message": f"Rate limit reached for {kind}. Please try again in "
                            f"{limits.retry_after}s.",
                            "type": kind,
                            "code": "rate_limit_exceeded",
                        }
                    },
                    status=429,
                    headers={"Retry-After": str(limits.retry_after)},
                )
            recent.append((now, tokens))
            log.accepted.append((now, tokens, key))
        if limits.latency:
            await asyncio.sleep(limits.latency)
        return completion(body, prompt, completion_tokens)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


def dumps(value: Any) -> str:
    return json.dumps(value)
