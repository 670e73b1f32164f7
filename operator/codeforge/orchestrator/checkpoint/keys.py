"""Redis key names of the checkpointer, in one place.

Every key of a thread carries the thread's hash tag (`cf:cp:{<thread>}:...`), so a Redis Cluster keeps a
thread on one slot and one script can write a whole checkpoint atomically. The only key outside a thread's
slot is the registry of thread ids, an index used by `alist(None)`; it is written before the thread's first
checkpoint and removed after its deletion, so it never names a thread that has no keys for long.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def thread_tag(thread_id: str) -> str:
    """The hash tag content: the thread id itself, or its digest when it holds braces (which end a tag)."""
    if thread_id and "{" not in thread_id and "}" not in thread_id:
        return thread_id
    return "h-" + hashlib.sha256(thread_id.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    prefix: str
    thread_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{thread_tag(self.thread_id)}}}"

    @property
    def namespaces(self) -> str:
        return f"{self.base}:nss"

    @property
    def writes_keys(self) -> str:
        return f"{self.base}:wkeys"

    def records(self, ns: str) -> str:
        return f"{self.base}:cps:{ns}"

    def index(self, ns: str) -> str:
        return f"{self.base}:idx:{ns}"

    def blobs(self, ns: str) -> str:
        return f"{self.base}:blobs:{ns}"

    def writes(self, ns: str, checkpoint_id: str) -> str:
        return f"{self.base}:w:{checkpoint_id}:{ns}"


def registry_key(prefix: str) -> str:
    return f"{prefix}:threads"
