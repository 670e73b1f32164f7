"""Commands packed by hiredis (`codeforge.redis.packing`) are the bytes redis-py's own packer makes, and
arguments it refuses are refused the same way."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from codeforge.redis.packing import HiredisPacking, hiredis_packed

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("CONFIG GET", "maxmemory"),  # a subcommand in the name: two arguments
    (b"CLIENT SETINFO", b"LIB-NAME", b"redis-py"),
    ("EVALSHA", "a" * 40, 1, "cf:{p}:", 1, "t1", 2, 3, 30000, '{"payload":"é✓"}', 10, 1000, "", 1, 0),
    ("SET", "k", ""),
    ("SET", "k", 1.5),
    ("SET", "k", 0.1),
    ("SET", "k", 1e20),
    ("SET", "k", -0.0),
    ("SET", "k", 10**30),
    ("SET", "k", -7),
    ("SET", "k", b"\x00\xff\r\n"),
    ("SET", "k", memoryview(b"view")),
    ("SET", "big", "x" * 100_000),  # redis-py chunks what is over its buffer cutoff: the same bytes
]


def python_packed(*args: Any) -> bytes:
    return b"".join(bytes(part) for part in Connection().pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]) + "/" + type(a[-1]).__name__)
def test_the_bytes_are_those_redis_py_packs(args: tuple[Any, ...]) -> None:
    packed = hiredis_packed(Connection)()
    assert b"".join(packed.pack_command(*args)) == python_packed(*args)


def test_a_pipeline_packs_each_command_with_hiredis() -> None:
    packed = hiredis_packed(Connection)()
    commands = [COMMANDS[3], COMMANDS[5], ("GET", "k")]
    expected = b"".join(python_packed(*c) for c in commands)
    assert b"".join(bytes(p) for p in packed.pack_commands(commands)) == expected


@pytest.mark.parametrize("bad", [None, True, ["a"], {"a": 1}])
def test_an_argument_redis_py_refuses_is_refused_as_redis_py_does(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError, match="Redis command argument"):
        hiredis_packed(Connection)().pack_command("SET", "k", bad)


@pytest.mark.parametrize("cls", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_each_connection_kind_keeps_its_class_and_name(cls: type[Connection]) -> None:
    packed = hiredis_packed(cls)
    assert issubclass(packed, cls)
    assert issubclass(packed, HiredisPacking)
    assert packed.__name__ == cls.__name__
    assert hiredis_packed(cls) is packed  # made once
