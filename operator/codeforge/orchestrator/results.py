"""A finished run's results when they are too large for the Workflow's status: one Redis string per run.

The status carries the results inline up to `RESULT_INLINE_LIMIT` bytes of JSON; past that the operator
stores them once, under `cf:wf:{<uid>}:result`, and the status names the key (`status.resultRef`). A client
(`codeforge get`) reads them back with `fetch_result` from the Redis the operator uses. The copy goes with
the run's other keys: on deletion of the Workflow and when its `ttlSecondsAfterFinished` passes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from codeforge.api.workflow_status import RESULT_INLINE_LIMIT, encoded_size
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver
from codeforge.queue.errors import queue_errors
from codeforge.redis import connect

_KEY_RE: Final = re.compile(r"^cf:wf:\{[A-Za-z0-9._-]{1,128}\}:result$")


class ResultGone(LookupError):
    """The status names a result copy that Redis no longer holds (the run's TTL or deletion removed it)."""


def result_key(uid: str) -> str:
    return f"cf:wf:{{{uid}}}:result"


class ResultStore:
    """Where results too large for the status go: a Redis string (or process memory with memory://)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._memory: dict[str, str] = {}

    @classmethod
    def beside(cls, saver: RedisCheckpointSaver) -> ResultStore:
        """On the checkpointer's connection (which the checkpointer owns and closes): results live and go
        with the run's checkpoints."""
        return cls(saver.client)

    async def put(self, key: str, text: str) -> None:
        if self._client is None:
            self._memory[key] = text
        else:
            await self._client.set(key, text)

    async def get(self, key: str) -> str | None:
        if self._client is None:
            return self._memory.get(key)
        value = await self._client.get(key)
        return value.decode() if isinstance(value, bytes) else value

    async def delete(self, key: str) -> None:
        if self._client is None:
            self._memory.pop(key, None)
        else:
            await self._client.delete(key)

    async def bounded(self, uid: str, results: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """The results for the status: inline when small, else (None, a `resultRef`) to the one copy."""
        size = encoded_size(results)
        if size <= RESULT_INLINE_LIMIT:
            return results, None
        key = result_key(uid)
        await self.put(key, json.dumps(results, default=str))
        return None, {"redisKey": key, "sizeBytes": size}


async def fetch_result(url: str, ref: Mapping[str, Any]) -> Any:
    """The results a Workflow's `status.resultRef` names, read from the Redis at `url` (the operator's queue
    URL). QueueError subclasses when Redis cannot be reached (the message names the URL without its
    password); ResultGone when the copy was removed; ValueError for a key that is not a result copy."""
    key = str(ref.get("redisKey") or "")
    if not _KEY_RE.match(key):
        raise ValueError(f"status.resultRef.redisKey {key[:80]!r} is not a Workflow result key")
    with queue_errors():
        conn = await connect(url)
    try:
        with queue_errors():
            text = await conn.client.get(key)
    finally:
        await conn.aclose()
    if text is None:
        raise ResultGone(
            f"the result copy {key} is no longer in Redis: the Workflow's ttlSecondsAfterFinished passed "
            "or the Workflow was deleted"
        )
    return json.loads(text)
