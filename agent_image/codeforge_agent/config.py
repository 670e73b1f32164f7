"""Agent settings from command-line flags and `CODEFORGE_*` environment variables (flags win).

The operator configures agent pods through the environment; people running an agent by hand use flags.
Every option is declared once in OPTIONS, which builds the argparse parser, reads the environment and
renders the README's table (`options_table()`; a unit test checks the README lists every variable).
Bad values raise ConfigError naming the flag, the variable and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from codeforge.api.task import validate_pool_name
from codeforge.queue.errors import QueueConfigError
from codeforge.queue.factory import check_url
from codeforge.queue.ratelimit import RateLimit

HANDLER_KINDS = ("echo", "sleep", "fail", "python", "command", "http", "openai")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the flag / variable and how to fix it."""


@dataclass(frozen=True)
class HandlerConfig:
    """Which handler runs the tasks and its settings (only the chosen kind's fields matter)."""

    kind: str = "echo"
    python_function: str = ""
    command: tuple[str, ...] = ()
    command_cwd: str | None = None
    command_env: Mapping[str, str] = field(default_factory=dict)
    http_url: str = ""
    http_headers: Mapping[str, str] = field(default_factory=dict)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_api_key_file: str | None = None
    openai_system_prompt: str | None = None
    openai_temperature: float | None = None
    openai_max_tokens: int | None = None
    openai_input_price: float | None = None
    openai_output_price: float | None = None


@dataclass(frozen=True)
class AgentConfig:
    """Everything the claim loop needs. Build it directly for in-process agents, or with `from_sources`."""

    pool: str
    queue_url: str = "memory://"
    role: str = ""
    agent_id: str = ""
    concurrency: int = 1
    lease_seconds: float = 30.0
    task_timeout: float | None = None
    grace_seconds: float = 25.0
    claim_wait: float = 1.0
    reap_interval: float = 1.0
    state_ttl: float = 15.0
    handler: HandlerConfig = field(default_factory=HandlerConfig)
    health_host: str = "0.0.0.0"
    health_port: int | None = 8080
    log_format: str = "text"
    log_level: str = "INFO"
    #: Workspaces (issue #11): the Git cache and worktrees; None = <temp dir>/codeforge-workspaces.
    workspace_dir: str | None = None
    workspace_size_limit: int | None = None
    git_credentials_dir: str | None = None
    git_author_name: str = "CodeForge"
    git_author_email: str = "codeforge@localhost"
    git_timeout: float = 600.0
    #: The fleet-wide rate limit this pool's agents share (spec.rateLimit); no key = none.
    rate_limit_key: str = ""
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    rate_limit_burst_seconds: float = 1.0
    #: The namespace the key belongs to (the operator sets the pool's own for keys the platform does not
    #: declare fleet-wide); empty: the fleet's key.
    rate_limit_scope: str = ""

    @property
    def rate_limit(self) -> RateLimit | None:
        if not self.rate_limit_key:
            return None
        return RateLimit(
            self.rate_limit_key,
            self.rate_limit_rpm,
            self.rate_limit_tpm,
            self.rate_limit_burst_seconds,
            self.rate_limit_scope,
        )

    @property
    def workspace_root(self) -> Path:
        return Path(self.workspace_dir or Path(tempfile.gettempdir()) / "codeforge-workspaces")

    def __post_init__(self) -> None:
        try:
            validate_pool_name(self.pool)
        except ValueError as exc:
            raise ConfigError(f"--pool / CODEFORGE_POOL: {exc}") from None
        if not self.agent_id:
            object.__setattr__(self, "agent_id", default_agent_id())
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency / CODEFORGE_CONCURRENCY must be >= 1, got {self.concurrency}")
        for name in ("lease_seconds", "claim_wait", "reap_interval", "state_ttl"):
            if getattr(self, name) <= 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} / CODEFORGE_{name.upper()} must be > 0, got {getattr(self, name)}")
        if self.lease_seconds > 86400:
            raise ConfigError(
                f"--lease-seconds / CODEFORGE_LEASE_SECONDS must be <= 86400 (a day), "
                f"got {self.lease_seconds}"
            )
        if self.grace_seconds < 0:
            raise ConfigError(
                f"--grace-seconds / CODEFORGE_GRACE_SECONDS must be >= 0, got {self.grace_seconds}"
            )
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise ConfigError(f"--task-timeout / CODEFORGE_TASK_TIMEOUT must be > 0, got {self.task_timeout}")
        if self.handler.kind not in HANDLER_KINDS:
            raise ConfigError(
                f"--handler / CODEFORGE_HANDLER: unknown handler {self.handler.kind!r}: "
                f"use one of {', '.join(HANDLER_KINDS)}"
            )
        if self.handler.kind == "python" and not self.handler.python_function:
            raise ConfigError(
                "the python handler needs --python-function / CODEFORGE_PYTHON_FUNCTION "
                "(e.g. 'my_agents.research:run')"
            )
        if self.handler.kind == "command" and not self.handler.command:
            raise ConfigError(
                "the command handler needs --command / CODEFORGE_COMMAND (e.g. 'python3 agent.py')"
            )
        if self.handler.kind == "http" and not self.handler.http_url.startswith(("http://", "https://")):
            raise ConfigError(
                "the http handler needs --http-url / CODEFORGE_HTTP_URL, an http(s) URL "
                f"(got {self.handler.http_url!r})"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"--log-format / CODEFORGE_LOG_FORMAT must be 'text' or 'json', got {self.log_format!r}"
            )
        if self.git_timeout <= 0:
            raise ConfigError(f"--git-timeout / CODEFORGE_GIT_TIMEOUT must be > 0, got {self.git_timeout}")
        if not self.git_author_name.strip() or "<" in self.git_author_name or "\n" in self.git_author_name:
            raise ConfigError(
                "--git-author-name / CODEFORGE_GIT_AUTHOR_NAME must be a plain name, e.g. 'CodeForge'"
            )
        if not re.fullmatch(r"[^<>\s]+@[^<>\s]+", self.git_author_email):
            raise ConfigError(
                "--git-author-email / CODEFORGE_GIT_AUTHOR_EMAIL must be an e-mail address, "
                f"e.g. 'codeforge@example.com' (got {self.git_author_email!r})"
            )
        self._check_rate_limit()
        try:
            check_url(self.queue_url)
        except QueueConfigError as exc:
            raise ConfigError(f"--queue-url / CODEFORGE_QUEUE_URL: {exc}") from None

    def _check_rate_limit(self) -> None:
        if not self.rate_limit_key:
            if self.rate_limit_rpm or self.rate_limit_tpm:
                raise ConfigError(
                    "--rate-limit-rpm / --rate-limit-tpm need --rate-limit-key / CODEFORGE_RATE_LIMIT_KEY "
                    "(the key the fleet shares, e.g. 'openai/gpt-4.1')"
                )
            return
        try:
            self.rate_limit  # noqa: B018 (validates)
        except ValueError as exc:
            raise ConfigError(f"--rate-limit-* / CODEFORGE_RATE_LIMIT_*: {exc}") from None

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> AgentConfig:
        """Flags first, then `CODEFORGE_*` variables, then defaults."""
        env = os.environ if env is None else env
        namespace = build_parser().parse_args(argv)
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = getattr(namespace, option.dest)
            if raw is None:
                raw = env.get(option.env) or None
            if raw is None:
                continue
            try:
                values[option.dest] = option.convert(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{option.flag} / {option.env}: {exc}") from None
        if "pool" not in values:
            raise ConfigError("no pool: set --pool or CODEFORGE_POOL to the AgentPool whose queue to serve")
        if "queue_url" not in values:
            raise ConfigError(
                "no queue: set --queue-url or CODEFORGE_QUEUE_URL (e.g. redis://redis:6379/0, "
                "redis+cluster://redis:6379, rediss://redis:6380/0)"
            )
        values["queue_url"] = with_ca_file(values["queue_url"], env.get("CODEFORGE_REDIS_CA_FILE"))
        handler_fields = {f for f in HandlerConfig.__dataclass_fields__}
        handler = HandlerConfig(**{k: v for k, v in values.items() if k in handler_fields or k == "kind"})
        rest = {k: v for k, v in values.items() if k not in handler_fields and k != "kind"}
        return cls(handler=handler, **rest)


def default_agent_id() -> str:
    """Pod name (HOSTNAME in Kubernetes) plus pid, unique even with several agents in one container."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


def with_ca_file(url: str, ca_file: str | None) -> str:
    """Add `ssl_ca_certs` from CODEFORGE_REDIS_CA_FILE (the Redis TLS CA) to a rediss:// URL."""
    if not ca_file:
        return url
    parts = urlsplit(url)
    if not parts.scheme.startswith("rediss"):
        raise ConfigError(
            f"CODEFORGE_REDIS_CA_FILE is set but the queue URL scheme is {parts.scheme!r}: "
            "use rediss:// (or rediss+cluster://) for TLS, or unset CODEFORGE_REDIS_CA_FILE"
        )
    if not Path(ca_file).is_file():
        raise ConfigError(
            f"CODEFORGE_REDIS_CA_FILE={ca_file!r} is not a readable file: mount the CA certificate"
        )
    query = dict(parse_qsl(parts.query))
    query.setdefault("ssl_ca_certs", ca_file)
    # safe="/": the queue backend reads query values verbatim (it does not percent-decode them).
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


# ---- value parsers: each raises ValueError with a message that says what is expected ----


def whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number of seconds, got {raw!r}")
    return value


def optional_seconds(raw: str) -> float | None:
    return None if raw.strip().lower() in ("", "none", "0", "off") else seconds(raw)


def health_port(raw: str) -> int | None:
    """`off` disables the health server; 0 lets the OS pick a free port (logged at start)."""
    if raw.strip().lower() in ("off", "none", "-1"):
        return None
    port = whole_number(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a TCP port 0-65535 or 'off', got {raw!r}")
    return port


def argv_list(raw: str) -> tuple[str, ...]:
    """A JSON list (`["python3", "agent.py"]`) or a shell-quoted string (`python3 agent.py`)."""
    text = raw.strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise ValueError("expected a non-empty JSON list of strings")
        return tuple(value)
    parts = shlex.split(text)
    if not parts:
        raise ValueError("expected a program and its arguments, got nothing")
    return tuple(parts)


def string_map(raw: str) -> dict[str, str]:
    """A JSON object (`{"A": "1"}`) or comma-separated `KEY=VALUE` pairs."""
    text = raw.strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object of strings")
        return {str(k): str(v) for k, v in value.items()}
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE pairs separated by commas, got {item!r}")
        pairs[key.strip()] = val
    return pairs


_QUANTITY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_QUANTITY_UNITS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def byte_size(raw: str) -> int | None:
    """A Kubernetes quantity (`5Gi`, `500M`, `1073741824`); `off` = no limit."""
    text = raw.strip()
    if text.lower() in ("", "off", "none"):
        return None
    match = _QUANTITY_RE.match(text)
    if not match:
        raise ValueError(f"expected a size such as 5Gi, 500Mi or 2G, got {raw!r}")
    return int(float(match.group(1)) * _QUANTITY_UNITS[match.group(2)])


def choice(options: Sequence[str]) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value

    return convert


def text(raw: str) -> str:
    return raw


def log_level(raw: str) -> str:
    return choice(("debug", "info", "warning", "error"))(raw).upper()


def price(raw: str) -> float:
    value = seconds(raw.replace("$", "")) if raw.strip() else 0.0
    if value < 0:
        raise ValueError(f"expected a price >= 0 (money per million tokens), got {raw!r}")
    return value


def count(raw: str) -> int:
    value = whole_number(raw)
    if not 0 <= value <= 10**12:
        raise ValueError(f"expected a whole number from 0 to 10^12, got {raw!r}")
    return value


def number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


@dataclass(frozen=True)
class Option:
    dest: str
    convert: Callable[[str], Any]
    help: str
    default: str = ""
    #: Public name when it differs from the field (the handler kind is `--handler`, `CODEFORGE_HANDLER`).
    name: str = ""

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.dest).replace("_", "-")

    @property
    def env(self) -> str:
        return "CODEFORGE_" + (self.name or self.dest).upper()


OPTIONS: tuple[Option, ...] = (
    Option("pool", text, "AgentPool whose queue this agent serves (e.g. `team-a/research`). Required."),
    Option("queue_url", text, "Queue URL: `redis://`, `rediss://` (TLS), `redis+cluster://`, `memory://`. "
           "Required. Password from `CODEFORGE_REDIS_PASSWORD` or `CODEFORGE_REDIS_PASSWORD_FILE`, "
           "TLS CA from `CODEFORGE_REDIS_CA_FILE`. `?durability=` (`fast`, `fsync`, `replicated`) "
           "waits for what the mode promises (README, Durability); the operator passes its own."),
    Option("role", text, "Role name (research, review, ...), shown in every log line.", ""),
    Option("agent_id", text, "Consumer name in the queue.", "`$HOSTNAME-<pid>`"),
    Option("concurrency", whole_number, "Tasks run at once by this agent.", "1"),
    Option("lease_seconds", seconds, "Lease on each claimed task (the pool's `spec.queue.leaseSeconds`): "
           "if this agent dies, its tasks are redelivered this long after its last heartbeat. Heartbeats "
           "every third of it.", "30"),
    Option("task_timeout", optional_seconds, "Per-task time limit; the task's deadline shortens it. "
           "`off` = only the deadline.", "off"),
    Option("grace_seconds", seconds, "On SIGTERM: how long in-flight tasks may finish before they are "
           "cancelled and handed back for retry. Keep below the pod's terminationGracePeriodSeconds.", "25"),
    Option("claim_wait", seconds, "Longest blocking claim; bounds how fast a SIGTERM stops claiming.", "1"),
    Option("reap_interval", seconds, "How often the agent requeues tasks whose lease expired.", "1"),
    Option("state_ttl", seconds, "TTL of the busy/idle record the agent keeps refreshed in the queue.", "15"),
    Option("kind", choice(HANDLER_KINDS), "Handler: " + ", ".join(HANDLER_KINDS) + ".", "echo", "handler"),
    Option("python_function", text,
           "python handler: `module:function` (sync or async), called with the task."),
    Option("command", argv_list, "command handler: program and arguments, shell-quoted or a JSON list."),
    Option("command_cwd", text, "command handler: working directory.", "the agent's"),
    Option("command_env", string_map, "command handler: extra environment, `A=1,B=2` or a JSON object."),
    Option("http_url", text, "http handler: URL the task JSON is POSTed to."),
    Option("http_headers", string_map, "http handler: extra request headers, `K=V,...` or a JSON object."),
    Option("openai_base_url", text, "openai handler: base URL of an OpenAI-compatible API.",
           "`https://api.openai.com/v1`"),
    Option("openai_model", text, "openai handler: model name.", "`gpt-4o-mini`"),
    Option("openai_api_key_file", text, "openai handler: file holding the API key (a mounted Secret); "
           "or set `CODEFORGE_OPENAI_API_KEY` (no flag, so the key never shows in `ps`)."),
    Option("openai_system_prompt", text, "openai handler: system message put before the task's messages."),
    Option("openai_temperature", number, "openai handler: sampling temperature.", "the API's"),
    Option("openai_max_tokens", whole_number, "openai handler: completion token limit.", "the API's"),
    Option("openai_input_price", price, "openai handler: price per million prompt tokens, for the "
           "`cost` in the result's usage when the provider reports none.", "none"),
    Option("openai_output_price", price, "openai handler: price per million completion tokens.", "none"),
    Option("rate_limit_key", text, "Fleet-wide rate-limit key shared by every agent naming it, e.g. "
           "`openai/gpt-4.1` (the pool's `spec.rateLimit.key`; README, Rate limits and budgets).", "none"),
    Option("rate_limit_rpm", count, "Requests per minute allowed on that key, fleet-wide; 0: none.", "0"),
    Option("rate_limit_tpm", count, "Tokens per minute allowed on that key, fleet-wide; 0: none.", "0"),
    Option("rate_limit_burst_seconds", seconds, "How many seconds' worth of the limits may go at once.",
           "1"),
    Option("rate_limit_scope", text, "The namespace whose pools share that key (the operator sets it for "
           "keys the platform does not declare fleet-wide); empty: the fleet's key.", "none"),
    Option("workspace_dir", text, "Workspaces: directory of the Git cache and the per-task worktrees (pods: "
           "the AgentPool's cache volume).", "`<temp dir>/codeforge-workspaces`"),
    Option("workspace_size_limit", byte_size, "Workspaces: size of that volume (the AgentPool's "
           "`spec.workspace.cacheSizeLimit`, e.g. `5Gi`); caches may use half, the rest is for worktrees.",
           "off"),
    Option("git_credentials_dir", text, "Workspaces: directory with the Git credentials as files: "
           "`username`+`password`, or `token`; or `ssh-privatekey` (+ `known_hosts`). Never in a URL."),
    Option("git_author_name", text, "Workspaces: author and committer name of the agent's commits.",
           "`CodeForge`"),
    Option("git_author_email", text, "Workspaces: their e-mail address.", "`codeforge@localhost`"),
    Option("git_timeout", seconds, "Workspaces: longest a fetch or push may take.", "600"),
    Option("health_host", text, "Address of the /healthz, /readyz, /metrics server.", "`0.0.0.0`"),
    Option("health_port", health_port, "Port of that server; 0 = any free port, `off` = no server.", "8080"),
    Option("log_format", choice(LOG_FORMATS), "`text` or `json` (one JSON object per line).", "text"),
    Option("log_level", log_level, "debug, info, warning or error.", "info"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codeforge-agent",
        description="Serve one AgentPool's task queue: claim tasks, run the handler, report results. "
        "Every flag can also be set by the CODEFORGE_* variable named in its help.",
    )
    for option in OPTIONS:
        default = f" Default: {option.default}." if option.default else ""
        parser.add_argument(
            option.flag, dest=option.dest, default=None, help=f"{option.help}{default} [{option.env}]"
        )
    return parser


def options_table() -> str:
    """The README's configuration table."""
    rows = ["| Flag | Environment | Meaning | Default |", "|---|---|---|---|"]
    for option in OPTIONS:
        rows.append(f"| `{option.flag}` | `{option.env}` | {option.help} | {option.default} |")
    return "\n".join(rows)
