"""The checkpoint serializer's fast path for `Send` writes the library's own bytes and reads back."""

from __future__ import annotations

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Send

from codeforge.orchestrator.checkpoint.serde import CheckpointSerializer


def test_a_send_is_written_as_the_library_writes_it_and_read_back_by_the_library() -> None:
    send = Send("run:s1", {"visit": 2, "index": 1, "payload": {"files": ["a.py"], "n": 3}, "base": "abc"})
    ours = CheckpointSerializer().dumps_typed(send)
    assert ours == JsonPlusSerializer().dumps_typed(send)
    assert JsonPlusSerializer().loads_typed(ours) == send


def test_everything_else_goes_through_the_library() -> None:
    value = {"route": {"to": "s1", "visit": 1}, "parts": {"s0#1": None}}
    assert CheckpointSerializer().dumps_typed(value) == JsonPlusSerializer().dumps_typed(value)
    assert CheckpointSerializer().dumps_typed(None) == ("null", b"")
