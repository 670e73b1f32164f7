"""`codeforge-agent`: serve one AgentPool's queue from a pod (or a shell).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT, in-flight tasks drained); 2 for a configuration error
(the message names the flag / variable and the fix). An unreachable queue is retried, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from codeforge import event_loop
from codeforge.queue import QueueConfigError, QueueUnavailableError, TaskQueue, open_queue
from codeforge.queue.ratelimit import RateLimiter, open_rate_limiter
from codeforge_agent.config import AgentConfig, ConfigError
from codeforge_agent.log_setup import configure, get_logger
from codeforge_agent.loop import Agent

if TYPE_CHECKING:
    from codeforge_agent.health import HealthServer

EXIT_CONFIG = 2
#: At start-up only an unreachable queue is retried; a wrong URL or password exits with EXIT_CONFIG.
CONNECT_ERRORS = (QueueUnavailableError, ConnectionError, OSError, TimeoutError)
T = TypeVar("T")


async def connect(
    url: str,
    stop: asyncio.Event,
    opener: Callable[[str], Awaitable[T]] = open_queue,  # type: ignore[assignment]
) -> T | None:
    """Open the queue (or the rate limiter on its Redis), retrying with backoff until it answers or we are
    told to stop."""
    log = get_logger()
    delay = 0.2
    while not stop.is_set():
        try:
            return await opener(url)
        except CONNECT_ERRORS as exc:
            log.warning(
                "queue unreachable, retrying in %.1fs: %s", delay, exc, extra={"event": "queue_error"}
            )
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, 5.0)
    return None


async def start_health(config: AgentConfig) -> HealthServer | None:
    if config.health_port is None:
        return None
    from codeforge_agent.health import HealthServer  # aiohttp: imported only when serving

    health = HealthServer(config.health_host, config.health_port)
    try:
        await health.start()
    except OSError as exc:
        await health.stop()
        raise ConfigError(
            f"--health-port / CODEFORGE_HEALTH_PORT: cannot listen on {config.health_host}:"
            f"{config.health_port} ({exc.strerror or exc}): pick a free port, or 'off'"
        ) from None
    get_logger().info(
        "health server on %s:%d", config.health_host, health.port, extra={"event": "health_listening"}
    )
    return health


async def serve(config: AgentConfig) -> int:
    log = get_logger(pool=config.pool, agent=config.agent_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name, extra={"event": "signal"})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    health = await start_health(config)
    try:
        queue: TaskQueue | None = await connect(config.queue_url, stop)
        if queue is None:
            return 0
        limiter: RateLimiter | None = None
        try:
            if config.rate_limit is not None:
                limiter = await connect(config.queue_url, stop, open_rate_limiter)
                if limiter is None:
                    return 0
            agent = Agent(queue, config, limiter=limiter)
            if health is not None:
                health.attach(agent)
            await agent.run(stop)
        finally:
            await queue.close()
            if limiter is not None:
                await limiter.close()
    finally:
        if health is not None:
            await health.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = AgentConfig.from_sources(argv)
        loop_factory = event_loop.choose()
    except (ConfigError, QueueConfigError, event_loop.EventLoopError) as exc:
        print(f"codeforge-agent: configuration error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    configure(config.log_format, config.log_level)
    try:
        code = event_loop.run(serve(config), loop_factory)
    except (ConfigError, QueueConfigError) as exc:  # e.g. a wrong password or TLS file found at connect
        print(f"codeforge-agent: configuration error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    exit_now(code)


def exit_now(code: int) -> None:
    """Exit even if a sync Python handler is stuck in its thread past its timeout.

    Everything is reported by now; but the interpreter joins thread-pool threads at exit, and a thread
    cannot be interrupted, so one hung function would keep the pod in Terminating until SIGKILL.
    """
    logging.shutdown()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
