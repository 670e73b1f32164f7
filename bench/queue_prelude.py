"""What the queue scripts' shared prelude (`lua/lib.lua`, prepended to every script) costs per call, against
the same library loaded once as a Redis Function (`FUNCTION LOAD`, Redis 7.0+): server time per call from
`INFO commandstats` on a private redis-server (no AOF), 20,000 pipelined calls per variant and round.

    .venv/bin/python bench/queue_prelude.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

import redis

from codeforge.testing.redis_server import LocalRedis

KEY = "cf:{prelude-bench}:"
FCALL = "fcall: library loaded once + TIME"


def _server_us(client: Any, command: str, calls: int, *args: Any) -> float:
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for _ in range(calls):
        pipe.execute_command(command, *args)
    pipe.execute()
    return float(client.info("commandstats")[f"cmdstat_{command.lower()}"]["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lib = (resources.files("codeforge.queue") / "lua" / "lib.lua").read_text()
    server = LocalRedis().start()
    try:
        client: Any = redis.Redis.from_url(server.url)
        bodies = {
            "evalsha: return 1": "return 1",
            "evalsha: lib.lua + return 1": lib + "\nreturn 1",
            "evalsha: lib.lua + TIME": lib + "\nreturn now_ms()",
        }
        shas = {name: client.script_load(body) for name, body in bodies.items()}
        # A library keeps its locals across calls: the prelude's helpers are made once, at load.
        client.function_load(
            "#!lua name=cfbench\nlocal P\n"
            + lib.replace("local P = KEYS[1]", "")
            + "\nredis.register_function('cfbench_time',"
            + " function(keys, args) P = keys[1]; return now_ms() end)"
        )
        results: dict[str, list[float]] = {name: [] for name in [*bodies, FCALL]}
        for _ in range(args.rounds):
            for name, sha in shas.items():
                results[name].append(_server_us(client, "EVALSHA", args.calls, sha, 1, KEY))
            results[FCALL].append(_server_us(client, "FCALL", args.calls, "cfbench_time", 1, KEY))
        out = {
            "redis_version": client.info("server")["redis_version"],
            "calls_per_round": args.calls,
            "usec_per_call": results,
        }
        print(json.dumps(out, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
