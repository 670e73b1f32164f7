"""Redis URLs, as the queue and the checkpointer take them.

- `redis://[[user]:password@]host:port[/db]`  one server; a cluster node is detected and used as a cluster
- `rediss://...`                        the same over TLS, verified against the system CAs or
                                        `?ssl_ca_certs=/path/ca.pem` (`?ssl_cert_reqs=none` opts out)
- `redis+cluster://host:port[,host:port...]`, `rediss+cluster://...`   a Redis Cluster, explicitly

`?durability=fast|fsync|replicated` says what an acknowledged write survives (README, "Durability").
The password may also come from `CODEFORGE_REDIS_PASSWORD` or a file named by
`CODEFORGE_REDIS_PASSWORD_FILE` (a mounted Secret), so it never has to sit in a URL; the ACL user name from
`CODEFORGE_REDIS_USERNAME` (agents: their pool's user, README "Multi-tenancy").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from codeforge.api.limits import clip
from codeforge.redis.errors import RedisConfigError

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
#: What an acknowledged write survives, weakest first (README, "Durability").
DURABILITY_MODES = ("fast", "fsync", "replicated")


@dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL: where to connect and with which redis-py options."""

    hosts: list[tuple[str, int]]
    options: dict[str, Any] = field(hash=False)
    cluster: bool  # the scheme says cluster; a plain URL to a cluster node is found out at connect
    durability: str
    safe: str  # the URL with its credentials replaced by ***, fit for messages and logs


def durability_of(url: str, explicit: str | None = None) -> str:
    """The durability mode: `explicit` if given, else the URL's `?durability=`, else `fast`."""
    mode = explicit or dict(parse_qsl(urlsplit(url).query)).get("durability") or "fast"
    if mode not in DURABILITY_MODES:
        raise RedisConfigError(
            f"queue durability {mode!r} is not a mode: use one of {', '.join(DURABILITY_MODES)} "
            "(e.g. redis://host:6379/0?durability=fsync)"
        )
    return mode


def password_from_env(env: dict[str, str] | None = None) -> str | None:
    env = dict(os.environ) if env is None else env
    if env.get("CODEFORGE_REDIS_PASSWORD"):
        return env["CODEFORGE_REDIS_PASSWORD"]
    path = env.get("CODEFORGE_REDIS_PASSWORD_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise RedisConfigError(
                f"CODEFORGE_REDIS_PASSWORD_FILE={path!r} cannot be read ({exc.strerror}): "
                "point it at the mounted Secret's file"
            ) from exc
    return None


def check_url(url: str) -> str:
    """The scheme of a valid Redis URL (ports are numbers, a host is named, the durability is a mode)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RedisConfigError(
            f"Redis URL scheme {clip(scheme, 60)} is not supported: use one of {', '.join(SCHEMES)}"
        )
    shown = clip(redact(url), 200)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    for host in hosts.split(","):
        if ":" in host:
            port = host.rsplit(":", 1)[1]
            if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
                raise RedisConfigError(f"queue URL {shown} has a port that is not a number from 1 to 65535")
    if not parts.hostname:
        raise RedisConfigError(f"queue URL {shown} names no host: use e.g. redis://localhost:6379/0")
    durability_of(url)
    return scheme


def parse_url(url: str, *, durability: str | None = None, decode_responses: bool = True) -> RedisURL:
    """Check and parse a Redis URL; the password falls back to the environment (`password_from_env`)."""
    check_url(url)
    mode = durability_of(url, durability)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = os.environ.get("CODEFORGE_REDIS_USERNAME") or None
    password = password_from_env()
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username = unquote(user) or username
        password = unquote(pw) or password
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "6379")
        hosts.append((host or "127.0.0.1", int(port or 6379)))
    options: dict[str, Any] = {
        "password": password,
        "username": username,
        "decode_responses": decode_responses,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 0,
    }
    query = dict(parse_qsl(parts.query))
    if scheme.startswith("rediss"):
        options["ssl"] = True
        # Verify the server against the system CAs (or ssl_ca_certs) unless the URL opts out explicitly.
        options["ssl_cert_reqs"] = query.get("ssl_cert_reqs", "required")
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if key in query:
                if not os.path.isfile(query[key]):
                    raise RedisConfigError(
                        f"queue URL option {key}={query[key]!r} names no readable file: "
                        "point it at the mounted certificate (e.g. /etc/codeforge/redis-tls/ca.crt)"
                    )
                options[key] = query[key]
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise RedisConfigError(f"queue URL database {db!r} must be a number, e.g. redis://host:6379/0")
        options["db"] = int(db)
    return RedisURL(hosts, options, scheme.endswith("+cluster"), mode, redact(url))


def redact(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return url.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)


def redact_credentials(url: str) -> str:
    """The URL without its user and password (what agents get when they hold identities of their own)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
