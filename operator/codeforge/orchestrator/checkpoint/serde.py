"""The checkpoint serializer: LangGraph's JsonPlusSerializer, with a fast path for `Send`.

Every fan-out write (one `Send` per step part) reaches the library's msgpack fallback, which tests the object
against a runtime-checkable Protocol before it recognises a Send; on Python 3.11 that check walks the
protocol's attributes on every call (~0.1-0.4 ms here, against ~10 us for a dict), and it was 15 % of the
operator's CPU with 1,000 Workflows running (bench/operator_scale.py). A `Send` is encoded here directly, to
the very bytes the library writes, so reading is the library's own and old checkpoints stay readable.
"""

from __future__ import annotations

from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_POS_ARGS, JsonPlusSerializer, _msgpack_enc
from langgraph.types import Send


class CheckpointSerializer(JsonPlusSerializer):
    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if type(obj) is Send:
            args: tuple[Any, ...] = (obj.node, obj.arg)
            if (timeout := getattr(obj, "timeout", None)) is not None:
                args = (obj.node, obj.arg, timeout)
            constructor = (Send.__module__, Send.__name__, args)
            return "msgpack", _msgpack_enc(ormsgpack.Ext(EXT_CONSTRUCTOR_POS_ARGS, _msgpack_enc(constructor)))
        return super().dumps_typed(obj)
