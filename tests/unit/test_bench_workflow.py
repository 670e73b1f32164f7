"""Smoke tests of `codeforge bench workflow`: tiny runs on a private real redis-server write JSON of the
agreed shape for codeforge and Celery; Temporal runs only where its CLI is built
(hack/bench/build-temporal.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from codeforge.benchmarks.cli import app as bench_app
from codeforge.testing.redis_server import redis_available

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not redis_available(), reason="redis-server is not installed (make deps)"),
]

TINY = ["--quick", "--samples", "5", "--workflows", "10"]


def _bench(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    code = f"{prelude}from codeforge.cli import main; main()"
    cmd = [sys.executable, "-c", code, "bench", "workflow", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env or dict(os.environ)
    )


def _rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    doc = json.loads(path.read_text())
    assert {"cpu_count", "python", "redis_version"} <= doc["machine"].keys()
    return {(r["system"], r["shape"]): r for r in doc["results"]}


def _assert_measured(row: dict[str, Any], samples: int = 5, workflows: int = 10) -> None:
    assert row["samples"] == samples, row
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
    assert row["workflows"] == workflows, row
    assert row["workflows_per_s"] > 0, row
    assert row["deployment"], row


def test_codeforge_and_celery_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "wf.json"
    systems = "codeforge-embedded,codeforge-redis,celery,hatchet"
    proc = _bench(*TINY, "--systems", systems, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["command"].startswith("codeforge bench workflow")
    rows = _rows(out)
    assert set(rows) == {(s, shape) for s in systems.split(",") for shape in ("chain", "fanout")}
    assert rows["codeforge-redis", "chain"]["steps"] == 3
    assert rows["codeforge-redis", "fanout"]["steps"] == 4
    for system in ("codeforge-embedded", "codeforge-redis", "celery"):
        for shape in ("chain", "fanout"):
            _assert_measured(rows[system, shape])
    for system in ("codeforge-embedded", "codeforge-redis"):
        chain = rows[system, "chain"]
        # the orchestrator's share of a step: chain latency / 3 - the queue's own round trip
        assert chain["queue_round_trip_p50_ms"] > 0
        expected = chain["p50_ms"] / 3 - chain["queue_round_trip_p50_ms"]
        assert chain["overhead_per_step_ms"] == pytest.approx(expected, abs=0.01)
        # the harness (orchestrator) process's CPU per step, beside the latency-derived figure
        for shape in ("chain", "fanout"):
            assert rows[system, shape]["harness_cpu_per_step_ms"] > 0
    for shape in ("chain", "fanout"):  # a peer's harness is only its client: no such figure
        assert "harness_cpu_per_step_ms" not in rows["celery", shape]
    for shape in ("chain", "fanout"):
        hatchet = rows["hatchet", shape]
        assert hatchet["p50_ms"] is None
        assert hatchet["workflows_per_s"] is None
        assert "github.com/hatchet-dev/hatchet" in hatchet["notes"]
    assert "Workflow benchmark" in proc.stdout
    assert "codeforge-redis chain: latency" in proc.stderr


def _in_process(*args: str) -> Result:
    """The command in this process: quick for paths that start no engine (each interpreter start costs
    seconds on a busy machine)."""
    return CliRunner().invoke(bench_app, ["workflow", *args])


def test_temporal_without_its_cli_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "wf.json"
    monkeypatch.setenv("CODEFORGE_TEMPORAL_BIN", str(tmp_path / "no-such-temporal"))
    result = _in_process(*TINY, "--systems", "temporal", "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    for shape in ("chain", "fanout"):
        assert rows["temporal", shape]["p50_ms"] is None
        assert "hack/bench/build-temporal.sh" in rows["temporal", shape]["notes"]


def test_missing_peer_library_is_skipped_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "wf.json"
    # A None entry makes the import fail as if the bench extra were not installed; the peer modules go too,
    # or the import would find them already loaded.
    for name in ("temporalio", "celery"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("codeforge.benchmarks.peers.temporal_peer", "codeforge.benchmarks.peers.celery_canvas"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    result = _in_process(*TINY, "--systems", "temporal,celery", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "pip install 'codeforge[bench]'" in result.output
    rows = _rows(out)
    assert len(rows) == 4
    assert all("not installed" in row["notes"] for row in rows.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--systems", "codeforge-redis,airflow"], "unknown system(s) airflow"),
        (["--samples", "0"], "--samples"),
        (["--workflows", "1000000"], "--workflows"),
        (["--redis-url", "redis://127.0.0.1:1/0", "--systems", "celery"], "cannot reach Redis"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    result = _in_process(*args)
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert message in text
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.slow  # Temporal's dev server and worker start in tens of seconds on 2 busy cores
def test_temporal_quick_run(tmp_path: Path) -> None:
    from codeforge.benchmarks.peers.temporal_peer import find_cli

    if find_cli() is None:
        pytest.skip("the temporal CLI is not built (bash hack/bench/build-temporal.sh, up to ~30 min of Go)")
    out = tmp_path / "wf.json"
    proc = _bench(*TINY, "--systems", "temporal", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    for shape in ("chain", "fanout"):
        _assert_measured(rows["temporal", shape])
        assert rows["temporal", shape]["version"].startswith("CLI 1.5.1")
