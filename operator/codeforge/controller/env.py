"""Reading the operator's settings from its environment: one parser per kind of value, one error type.

Each error names the variable, the value it had and what to write instead, so a bad Deployment setting
stops the operator at startup with a line the user can act on (`config.py`, `leader.py` and
`workflow/settings.py` read their variables through these).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class ConfigError(ValueError):
    pass


def text(env: Mapping[str, str], name: str, default: str = "") -> str:
    """The variable's value without surrounding blanks; `default` when unset or blank."""
    return env.get(name, "").strip() or default


def seconds(env: Mapping[str, str], name: str, default: float, *, maximum: float | None = None) -> float:
    """A positive number of seconds (or any positive rate), at most `maximum`: `default` when unset or
    blank."""
    return _positive(env, name, default, "a number of seconds", maximum)


def positive(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number (a rate, a count per second): `default` when unset or blank."""
    return _positive(env, name, default, "a number", None)


def _positive(env: Mapping[str, str], name: str, default: float, what: str, maximum: float | None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {what}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r}: expected a finite number")
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be greater than 0")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={raw!r}: must be at most {maximum:g}")
    return value


def count(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number of at least 1: `default` when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r}: expected a whole number of at least 1")
    return int(raw)


def port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port; None when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name}={raw!r}: expected a TCP port (1-65535)")
    return int(raw)


def flag(env: Mapping[str, str], name: str) -> bool:
    """true/false (also on/off, 1/0, yes/no); false when unset or blank."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "false", "off", "0", "no"):
        return False
    if raw in ("true", "on", "1", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r}: use true or false")
