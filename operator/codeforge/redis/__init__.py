"""The one place that talks to Redis: URLs, connecting (one server or a cluster), Lua scripts and errors.

The task queue and the checkpointer both build on it, so they read the same URLs, give the same one-line
errors (unreachable, wrong password, bad TLS file) and load scripts the same way.
"""

from codeforge.redis.connect import Connection, connect
from codeforge.redis.errors import TRANSIENT, RedisConfigError, RedisStoreError, RedisUnavailableError
from codeforge.redis.scripts import Script, ScriptPipeline
from codeforge.redis.url import DURABILITY_MODES, SCHEMES, RedisURL, check_url, durability_of, parse_url

__all__ = [
    "DURABILITY_MODES",
    "SCHEMES",
    "TRANSIENT",
    "Connection",
    "RedisConfigError",
    "RedisStoreError",
    "RedisURL",
    "RedisUnavailableError",
    "Script",
    "ScriptPipeline",
    "check_url",
    "connect",
    "durability_of",
    "parse_url",
]
