"""Lua scripts run by SHA, sent in full once when a server does not know them yet (NOSCRIPT)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors


class Script:
    """One Lua script: its source and SHA1, and `run` with the NOSCRIPT fallback."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def from_package(cls, package: str, name: str, *, prelude: str = "") -> Script:
        """`lua/<name>.lua` beside `package`, with the file `lua/<prelude>.lua` prepended if named."""
        folder = resources.files(package) / "lua"
        source = (folder / f"{name}.lua").read_text()
        if prelude:
            source = (folder / f"{prelude}.lua").read_text() + "\n" + source
        return cls(name, source)

    async def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """EVALSHA, or EVAL on a NOSCRIPT reply (a restarted or newly promoted node lost its cache)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


class ScriptPipeline:
    """Script calls made in one turn of the event loop, sent to one server as one pipeline: one write and one
    round trip for many (hundreds of runs checkpointing at once). Each call still succeeds or fails alone;
    a call whose caller was cancelled meanwhile is sent all the same, as a script already on its way is."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._calls: list[tuple[Script, Sequence[Any], Sequence[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Future[None]] = set()

    async def run(self, script: Script, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            # Its first step runs in the next turn, after every call of this one; a task made here rather
            # than from a call_soon callback, since on a busy loop every hop is a whole turn.
            job = loop.create_task(self._send())
            self._sending.add(job)
            job.add_done_callback(self._sending.discard)
        self._calls.append((script, keys, args, done))
        return await done

    async def _send(self) -> None:
        calls, self._calls = self._calls, []
        if len(calls) == 1:
            script, keys, args, done = calls[0]
            replies: list[Any] = [await _outcome(script.run(self._client, keys, args))]
        else:
            pipe = self._client.pipeline(transaction=False)
            for script, keys, args, _ in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            executed = await _outcome(pipe.execute(raise_on_error=False))
            replies = [executed] * len(calls) if isinstance(executed, BaseException) else list(executed)
            for i, (script, keys, args, _) in enumerate(calls):
                if isinstance(replies[i], redis_errors.NoScriptError):
                    replies[i] = await _outcome(self._client.eval(script.source, len(keys), *keys, *args))
        for (_, _, _, done), reply in zip(calls, replies, strict=True):
            if done.done():
                continue
            if isinstance(reply, BaseException):
                done.set_exception(reply)
            else:
                done.set_result(reply)

    async def drain(self) -> None:
        """Wait for the calls on their way (before closing the client)."""
        if self._sending:
            await asyncio.wait(self._sending)


async def _outcome(call: Any) -> Any:
    """The reply of a call, or the exception it raised (cancellation of the sender itself propagates)."""
    try:
        return await call
    except Exception as exc:
        return exc
