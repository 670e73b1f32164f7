"""Where Workflow results too large for the status go: a Redis string beside the run's checkpoints (on the
checkpointer's connection, which the checkpointer owns and closes), or process memory with memory://."""

from __future__ import annotations

import json
from typing import Any

from codeforge.api.workflow_status import RESULT_INLINE_LIMIT, encoded_size
from codeforge.controller.kstatus import ObjectRef
from codeforge.orchestrator.checkpoint import RedisCheckpointSaver

JSON = dict[str, Any]


class ResultStore:
    """Where results too large for the status go: a Redis string (or process memory with memory://)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._memory: dict[str, str] = {}

    @classmethod
    def beside(cls, saver: RedisCheckpointSaver) -> ResultStore:
        """On the checkpointer's connection: results live and go with the run's checkpoints."""
        return cls(saver.client)

    @staticmethod
    def key(ref: ObjectRef) -> str:
        return f"cf:wf:{{{ref.uid}}}:result"

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


async def bounded_result(
    store: ResultStore, ref: ObjectRef, results: dict[str, Any]
) -> tuple[Any, JSON | None]:
    """The result for the status: inline when small, else a reference to a Redis copy."""
    size = encoded_size(results)
    if size <= RESULT_INLINE_LIMIT:
        return results, None
    key = ResultStore.key(ref)
    await store.put(key, json.dumps(results, default=str))
    return None, {"redisKey": key, "sizeBytes": size}
