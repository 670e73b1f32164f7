"""Smoke test of `codeforge bench queue`: a quick run on a private Redis writes JSON of the agreed shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codeforge.testing.redis_server import redis_available

REQUIRED = {
    "system",
    "version",
    "consumers",
    "scenario",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "throughput_per_s",
    "tasks",
}

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not redis_available(), reason="redis-server is not installed (make deps)"),
]


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from codeforge.cli import main; main()", "bench", "queue", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def test_quick_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _bench("--quick", "--systems", "codeforge,raw", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {"cpu_count", "python", "redis_version"} <= doc["machine"].keys()
    assert doc["command"].startswith("codeforge bench queue")
    rows = doc["results"]
    assert {(r["system"], r["scenario"], r["consumers"]) for r in rows} == {
        (system, scenario, consumers)
        for system in ("codeforge", "raw")
        for scenario in ("latency", "idle-wakeup", "throughput")
        for consumers in (1, 3)
    }
    for row in rows:
        assert row.keys() >= REQUIRED
        assert row["tasks"] > 0, row
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
        if row["scenario"] == "throughput":
            assert row["throughput_per_s"] > 0, row
            assert "duplicate" not in row["notes"], row
    # Issue 15's goal, per consumer count: codeforge's latency p99 over the floor's of the same run.
    latency = {(r["system"], r["consumers"]): r for r in rows if r["scenario"] == "latency"}
    for consumers in (1, 3):
        ours, floor = latency["codeforge", consumers], latency["raw", consumers]
        assert ours["p99_vs_floor"] == round(ours["p99_ms"] / floor["p99_ms"], 2), ours
        assert floor["p99_vs_floor"] is None
        # ... from samples taken in turns, so both saw the same moments of the machine
        assert "samples in turns with raw's" in ours["notes"], ours
        assert "samples in turns with codeforge's" in floor["notes"], floor
    assert all(r["p99_vs_floor"] is None for r in rows if r["scenario"] != "latency")
    assert not any("in turns" in r["notes"] for r in rows if r["scenario"] != "latency")
    # The table goes to stdout, progress to stderr.
    assert "Queue benchmark" in proc.stdout
    assert "p99 / floor" in proc.stdout
    assert "[codeforge]" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--systems", "codeforge,sidekiq"], "unknown system(s) sidekiq"),
        (["--consumers", "1,x"], "comma list of whole numbers"),
        (["--consumers", "0"], "at least 1"),
        (["--redis-url", "redis://127.0.0.1:1/0", "--systems", "raw"], "cannot reach Redis"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    proc = _bench(*args, timeout=60)
    assert proc.returncode != 0
    text = " ".join((proc.stderr + proc.stdout).split())
    assert message in text
    assert "Traceback" not in text


def test_missing_peer_is_skipped_with_install_hint(tmp_path: Path) -> None:
    # `sys.modules["celery"] = None` makes `import celery` fail as if the bench extra were not installed.
    out = tmp_path / "bench.json"
    code = "import sys; sys.modules['celery'] = None; from codeforge.cli import main; main()"
    args = ["bench", "queue", "--systems", "celery", "--consumers", "1", "--throughput-consumers", "1"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'codeforge[bench]'" in proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert {r["scenario"] for r in rows} == {"latency", "idle-wakeup", "throughput"}
    assert all(r["p99_ms"] is None and "not installed" in r["notes"] for r in rows)


def test_fairness_quick_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "fairness.json"
    cmd = [sys.executable, "-c", "from codeforge.cli import main; main()", "bench", "fairness", "--quick"]
    cmd += ["--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    rows = {(r["backend"], r["mode"]): r for r in doc["results"]}
    assert set(rows) == {("memory", "fifo"), ("memory", "fair"), ("redis", "fifo"), ("redis", "fair")}
    for backend in ("memory", "redis"):
        # The late Workflow waits for the whole backlog in FIFO order, and only a few turns when fair.
        assert rows[(backend, "fair")]["small_p99_ms"] < rows[(backend, "fifo")]["small_p99_ms"] / 3
    assert "small p99" in proc.stdout
