"""The one line a user reads when a command cannot do its job: `error: <what> (<how to fix it>)`, exit 1.

Errors a user will meet (no cluster, CRDs missing, a Workflow not found, Redis unreachable, a bad URL or
manifest) become a `CliError` at the place that knows what went wrong; `one_line_errors` prints it without
a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

#: Exit codes: 1 a command failed; 2 bad usage (Typer's own); 3 a watched Workflow ended Failed/Cancelled.
EXIT_ERROR = 1
EXIT_WORKFLOW_FAILED = 3


class CliError(Exception):
    """A failure the user can act on; its message is the whole line shown."""


def fail(message: str) -> CliError:
    return CliError(message)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the errors a user will meet into `error: ...` on stderr and exit code 1."""
    from codeforge.queue.errors import QueueError
    from codeforge.redis.errors import RedisConfigError

    try:
        yield
    except CliError as exc:
        _exit(str(exc))
    except (QueueError, RedisConfigError) as exc:  # unreachable Redis, bad URL: the message names the URL
        _exit(str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise typer.Exit(130) from None


def _exit(message: str) -> None:
    # One line, except a manifest's validation report, which lists each field to fix on its own line.
    typer.echo(f"error: {message.strip() or 'failed'}", err=True)
    raise typer.Exit(EXIT_ERROR)


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command so its user-facing errors print one line (Typer keeps the signature)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return func(*args, **kwargs)

    return wrapper
