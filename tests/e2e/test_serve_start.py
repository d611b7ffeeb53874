"""What a person sees when `parley serve` starts: one line for a taken port (and nothing
made), where the database is, "Running on" once, no Alembic chatter, and --help texts
that name the defaults."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.procs import PARLEY, clean_env, free_port

ALEMBIC_CHATTER = ("Context impl", "Will assume", "setup plugin", "alembic.runtime")


def test_taken_port_is_one_line_exit_2_before_anything_is_made(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [*PARLEY, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"parley serve: 127.0.0.1:{port} is already in use; "
        "choose another with --port or PARLEY_PORT"
    ]
    assert "Traceback" not in r.stdout
    # checked before migrating or making the development key: the folder stays empty
    assert list(tmp_path.iterdir()) == []


def test_taken_port_from_the_environment(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env() | {"PARLEY_PORT": str(port)}
        r = subprocess.run(
            [*PARLEY, "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 2
    assert r.stderr.strip().endswith("choose another with --port or PARLEY_PORT")


def test_start_names_the_database_prints_running_on_once_and_no_alembic_lines(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*PARLEY, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not answer in 30 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    starting = next(e for e in events if e["event"] == "starting")
    data_dir = tmp_path.resolve() / "parley-data"
    assert starting["database"] == str(data_dir / "parley.db")
    assert starting["dataDir"] == str(data_dir)
    assert (data_dir / "parley.db").exists()
    both = out + err
    assert both.count("Running on") == 1, both
    assert f"Running on http://127.0.0.1:{port}" in both
    for chatter in ALEMBIC_CHATTER:
        assert chatter not in both, both


def test_migrate_names_the_database_and_prints_no_alembic_lines(tmp_path: Path) -> None:
    r = subprocess.run(
        [*PARLEY, "migrate"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    db = tmp_path.resolve() / "parley-data" / "parley.db"
    assert r.stdout.strip() == f"database at revision 0002 ({db})"
    for chatter in ALEMBIC_CHATTER:
        assert chatter not in r.stdout + r.stderr


def help_of(*args: str) -> str:
    r = subprocess.run(
        [*PARLEY, *args, "--help"], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # argparse wraps lines


def test_help_describes_every_flag_and_names_the_defaults() -> None:
    serve = help_of("serve")
    assert "--host HOST address to listen on (default: PARLEY_HOST, else 127.0.0.1)" in serve
    assert "(default: PARLEY_PORT, else 8000)" in serve
    assert "(default: PARLEY_WORKERS, else 1)" in serve
    assert "sqlite:///./parley-data/parley.db, relative to the current folder" in serve
    assert "sqlite:///./parley-data/parley.db" in help_of("migrate")
    assert "email address" in help_of("admin", "grant")
    assert "retention,backup,restore-check" in help_of("jobs", "run")
