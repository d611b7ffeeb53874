"""The benchmark harness still works: a tiny run of the real thing, correctness only.

Runs ``benchmarks/run.py --quick --only smoke`` as a process: a fake upstream
process, a real ``parley serve`` process on the embedded default (SQLite, no
Redis), and one load-generator worker process driving a few WebSocket clients
(one of them disconnects mid-stream and resumes). Asserts that no token was
lost or reordered and that the result JSON is well-formed; never asserts speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_harness_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "smoke"]
    cmd += ["--results-dir", str(tmp_path), "--no-plots"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads((tmp_path / "smoke-quick.json").read_text())
    assert doc["scenario"] == "smoke-quick"
    assert doc["command"].startswith("python benchmarks/run.py")
    assert doc["machine"]["cpus"] >= 1
    assert doc["lost_tokens"] == 0
    for run in doc["runs"]:
        assert run["clients"] == 4
        assert run["ok"] == 4, run["errors"]
        assert run["lost_tokens"] == 0
        assert run["reordered_frames"] == 0
        assert run["missing_traces"] == 0
        assert run["tokens_relayed"] == 4 * run["tokens_per_stream"]
        assert run["frames"] >= 1
        assert 0 < run["frames_per_token"] <= 1.5  # replayed frames may add a few
        for key in ("relay_ms", "first_token_ms", "ack_ms", "send_to_upstream_ms"):
            figures = run[key]
            assert figures["n"] >= 1
            assert 0 <= figures["p50"] <= figures["p99"] <= figures["max"]
        server = run["server"]
        assert server["kind"] == "parley-sqlite"
        assert server["cpu_s_stream_phase"] >= 0
        assert server["rss_mib"] > 0
        assert server["relay_seconds_hist"]["n"] >= 1
    assert doc["runs"][0]["resumed_clients"] == 1  # the disconnect + resume path ran
