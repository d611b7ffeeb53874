"""The soak harness still works: a tiny run of the real thing, correctness only.

Runs ``benchmarks/soak.py`` for 18 s as a process: a fake upstream process, a fresh
MariaDB database, a redis-server of its own, a real ``parley serve`` on them, and one
load-generator worker process whose 4 clients loop turns (some dropping the socket
mid-answer and resuming). Asserts that the result JSON and the plot are well formed and
that nothing was lost, duplicated or failed; never asserts speed or memory growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Like the chaos tests (tests/chaos): a fresh database on the real MariaDB, and a Redis.
pytestmark = [pytest.mark.mysql, pytest.mark.redis]


def test_soak_harness_smoke(tmp_path: Path) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "0.3"]
    cmd += ["--streams", "4", "--tokens", "20", "--tps", "50", "--sample-seconds", "2"]
    cmd += ["--out", str(out), "--plot", str(png)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    doc = json.loads(out.read_text())
    assert doc["scenario"] == "soak"
    assert doc["command"].startswith("python benchmarks/soak.py --minutes 0.3")
    assert doc["machine"]["cpus"] >= 1
    settings = doc["settings"]
    assert settings["streams"] == 4
    assert settings["tokens"] == 20
    assert "PARLEY_GUEST_CHAT_SENDS_PER_MINUTE" in settings["server_env_limits"]

    samples = doc["samples"]
    assert len(samples) >= 5
    for s in samples:
        assert s["rss_mib"] > 0
        assert s["fds"] > 0
        assert s["cpu_s"] >= 0
        assert s["redis_used_memory_bytes"] > 0
        assert s["phase"] in ("load", "tail")
    assert all(s["cpu_share"] is not None and s["cpu_share"] >= 0 for s in samples[1:])
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    assert samples[-1]["turns"] > samples[0]["turns"] == 0

    totals = doc["totals"]
    assert totals["turns"] > 0
    assert totals["tokens"] >= totals["turns"] * 20
    assert totals["lost"] == 0, doc["lost_examples"]
    assert totals["duplicated"] == 0
    assert totals["errors"] == 0, totals["errors_by_kind"]

    verdict = doc["verdict"]
    for key in ("rss_mib", "fds", "redis_used_memory_bytes"):
        assert set(verdict[key]) >= {"after_warmup", "end", "growth", "growth_pct"}
    assert verdict["nothing_lost_or_failed"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
