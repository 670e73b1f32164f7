"""Workspace preparation per task (cache cold vs warm) and a step's extra time for checkout + commit + push.

A generated repository (default 10,000 files, 100 MiB of text-like content in one commit) is served over
smart HTTP (`git http-backend` with basic auth on 127.0.0.1, tests/support/git_server.py) or file://. Figures,
each over several runs, with codeforge.workspace exactly as the agent uses it:

- cold: an empty cache: create it, fetch everything, check out a worktree (a new pod's first task);
- warm, same commit: the commit is cached and a spare worktree is ready (the agent's next task);
- warm, new commit: a commit 10 files newer than the cached one: fetch only its objects, move the spare;
- warm without spare: `git worktree add` of the whole tree from a warm cache (what the spare saves);
- step overhead: prepare + commit + push + diffstat of a step that changed 10 files (the handler excluded).

    .venv/bin/python bench/workspace_prep.py [--files 10000] [--mib 100] [--runs 15] [--transport http]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from codeforge.benchmarks.stats import percentile
from codeforge.workspace import Workspaces, WorkspaceSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.git_server import GitServer

RESULTS = Path(__file__).parent / "results" / "workspace.json"
GOAL_WARM_P50_MS = 200.0


def generate(bare: Path, files: int, mib: int) -> str:
    """A bare repo whose `main` holds `files` files of `mib` MiB in total, written with git fast-import."""
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch", "main", str(bare)], check=True)
    rnd = random.Random(11)
    per = mib * 2**20 // files
    importer = subprocess.Popen(["git", "-C", str(bare), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    assert importer.stdin is not None
    write = importer.stdin.write
    for i in range(files):
        blob = base64.encodebytes(rnd.randbytes(per * 3 // 4 + 3))[
            :per
        ]  # base64 lines: like text, ~incompressible
        write(b"blob\nmark :%d\ndata %d\n%s\n" % (i + 1, len(blob), blob))
    write(b"commit refs/heads/main\ncommitter Bench <bench@example.com> 1700000000 +0000\ndata 6\nbench\n")
    for i in range(files):
        write(b"M 100644 :%d src/pkg%03d/module%05d.py\n" % (i + 1, i // 100, i))
    write(b"\n")
    importer.stdin.close()
    if importer.wait() != 0:
        raise SystemExit("git fast-import failed")
    return subprocess.run(
        ["git", "-C", str(bare), "rev-parse", "main"], capture_output=True, text=True, check=True
    ).stdout.strip()


def edit(path: Path, n: int, salt: str) -> None:
    """Change `n` files spread over the tree, as a step's handler would."""
    modules = sorted((path / "src").glob("pkg*/module*.py"))
    for target in modules[:: max(1, len(modules) // n)][:n]:
        target.write_text(f"# edited by step {salt}\n" + target.read_text()[:4000])


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "runs": len(values),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(percentile(ordered, 95) * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await call()
    return time.perf_counter() - started, value


def objects(repo: Path) -> int:
    out = subprocess.run(["git", "count-objects", "-v"], cwd=repo, capture_output=True, text=True, check=True)
    fields = dict(line.split(": ") for line in out.stdout.splitlines())
    return int(fields["count"]) + int(fields["in-pack"])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-ws-"))
    started = time.perf_counter()
    base = generate(tmp / "srv" / "repo.git", args.files, args.mib)
    print(f"generated {args.files} files, {args.mib} MiB in {time.perf_counter() - started:.1f}s", flush=True)
    server = GitServer(tmp / "srv").start() if args.transport == "http" else None
    creds: Path | None = None
    if server is not None:
        creds = tmp / "creds"
        creds.mkdir()
        (creds / "username").write_text(server.username)
        (creds / "password").write_text(server.password)
        url = server.url("repo.git")
    else:
        url = f"file://{tmp / 'srv' / 'repo.git'}"
    figures: dict[str, list[float]] = {
        k: [] for k in ("cold", "warm_same", "warm_new", "warm_no_spare", "step")
    }
    parts: dict[str, list[float]] = {"prepare": [], "commit": [], "push": [], "describe": []}
    fetched_objects: list[int] = []
    try:
        for n in range(args.cold_runs):
            cold = Workspaces(WorkspaceSettings(root=tmp / f"cold{n}", credentials_dir=creds))
            seconds, checkout = await timed(lambda: cold.prepare(url, base))  # noqa: B023
            figures["cold"].append(seconds)
            print(f"cold {n}: {seconds * 1000:.0f} ms", flush=True)
            cold.release(checkout)
            await cold.aclose()

        no_spare = Workspaces(
            WorkspaceSettings(root=tmp / "cold0", credentials_dir=creds, spare_worktrees=False)
        )
        for _ in range(args.cold_runs):
            seconds, checkout = await timed(lambda: no_spare.prepare(url, base))
            figures["warm_no_spare"].append(seconds)
            no_spare.release(checkout)
            await no_spare.settle()
        await no_spare.aclose()

        ws = Workspaces(WorkspaceSettings(root=tmp / "cold0", credentials_dir=creds))
        producer = Workspaces(WorkspaceSettings(root=tmp / "producer", credentials_dir=creds))
        first = await ws.prepare(url, base)
        ws.release(first)
        await ws.settle()
        for _ in range(args.runs):
            seconds, checkout = await timed(lambda: ws.prepare(url, base))
            figures["warm_same"].append(seconds)
            ws.release(checkout)
            await ws.settle()
        head = base
        for n in range(args.runs):
            # Another agent (a previous step) pushes a commit 10 files newer.
            made = await producer.prepare(url, head)
            edit(made.path, 10, f"p{n}")
            head = await producer.commit(made, f"step {n}")
            await producer.push(made.repo, url, head, f"refs/codeforge/bench/new/v{n}/p0")
            producer.release(made, head)
            await producer.settle()
            before = objects(ws.repo_path(url))
            seconds, checkout = await timed(lambda: ws.prepare(url, head))  # noqa: B023
            fetched_objects.append(objects(ws.repo_path(url)) - before)
            figures["warm_new"].append(seconds)
            ws.release(checkout)
            await ws.settle()
        for n in range(args.runs):
            total_started = time.perf_counter()
            prep, checkout = await timed(lambda: ws.prepare(url, head))
            edit(checkout.path, 10, f"s{n}")  # the handler's work: not counted
            handler_end = time.perf_counter()
            commit_s, commit = await timed(lambda: ws.commit(checkout, f"step {n}"))  # noqa: B023
            push_s, _ = await timed(
                lambda: ws.push(checkout.repo, url, commit, f"refs/codeforge/bench/step/v{n}/p0")  # noqa: B023
            )
            describe_s, _ = await timed(lambda: ws.describe(checkout.repo, url, head, commit, "r"))  # noqa: B023
            handler_s = handler_end - total_started - prep
            figures["step"].append(time.perf_counter() - total_started - handler_s)
            for name, value in (
                ("prepare", prep),
                ("commit", commit_s),
                ("push", push_s),
                ("describe", describe_s),
            ):
                parts[name].append(value)
            ws.release(checkout, head)
            await ws.settle()
        await ws.aclose()
        await producer.aclose()
    finally:
        if server is not None:
            server.stop()
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return {
        "system": "codeforge.workspace",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "git": args.git_version,
        "transport": args.transport,
        "repository": {"files": args.files, "mib": args.mib},
        "scenarios": {name: stats(values) for name, values in figures.items() if values},
        "step_parts": {name: stats(values) for name, values in parts.items() if values},
        "fetched_objects_per_new_commit": statistics.median(fetched_objects) if fetched_objects else None,
        "goal_warm_p50_ms": GOAL_WARM_P50_MS,
    }


def table(result: dict[str, Any]) -> str:
    labels = {
        "cold": "cold cache: create, fetch all, check out",
        "warm_same": "warm, same commit (spare ready)",
        "warm_new": "warm, commit 10 files newer (fetch new objects, move spare)",
        "warm_no_spare": "warm, no spare: `git worktree add` of the whole tree",
        "step": "step overhead: prepare + commit + push + diffstat",
    }
    rows = ["| scenario | p50 ms | p95 ms | min ms | runs |", "|---|---|---|---|---|"]
    for name, figure in result["scenarios"].items():
        rows.append(
            f"| {labels[name]} | {figure['p50_ms']:.0f} | {figure['p95_ms']:.0f} | {figure['min_ms']:.0f} "
            f"| {figure['runs']} |"
        )
    parts = ", ".join(f"{k} {v['p50_ms']:.0f}" for k, v in result["step_parts"].items())
    rows.append("")
    rows.append(f"step parts p50 (ms): {parts}")
    rows.append(f"objects fetched per new commit (median): {result['fetched_objects_per_new_commit']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=15, help="runs of each warm scenario")
    parser.add_argument("--cold-runs", type=int, default=3, help="runs of the cold and no-spare scenarios")
    parser.add_argument("--transport", choices=("http", "file"), default="http")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args()
    args.git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout
    args.git_version = args.git_version.strip()
    result = asyncio.run(run(args))
    print(table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
