"""``parley check`` (server/check.py) on both backends, and against a broken setting of
each kind: settings, database (down, not migrated), clock, Redis (down, evicting),
upstream (down, misconfigured), JWT keys."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.fake_upstream import running_fake_upstream
from jobs.dumpfmt import migrations_head
from server import check
from tests.conftest import REDIS_URL, TEST_JWT_KEYS, MySQLDatabases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **values: str) -> None:
    for k in list(os.environ):
        if k.startswith("PARLEY_"):
            monkeypatch.delenv(k)
    base = {
        "PARLEY_ENV": "test",
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_JWT_KEYS": TEST_JWT_KEYS,
    }
    base.update({f"PARLEY_{k.upper()}": v for k, v in values.items()})
    for k, v in base.items():
        monkeypatch.setenv(k, v)


def run(upstream: bool = False) -> tuple[int, dict[str, str]]:
    lines: list[str] = []
    code = check.run_checks(upstream=upstream, out=lines.append)
    by_name = {}
    for line in lines:
        name, _, rest = line.partition(": ")
        by_name[name] = rest
    return code, by_name


@pytest.fixture(
    params=["sqlite", pytest.param("mysql", marks=[pytest.mark.mysql, pytest.mark.redis])]
)
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {"database_url": request.getfixturevalue("sqlite_url")}
    return {"database_url": request.getfixturevalue("mysql_url"), "redis_url": REDIS_URL}


def test_all_ok(
    backend_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setenv(monkeypatch, tmp_path, **backend_env)
    code, lines = run()
    assert code == 0, lines
    assert list(lines) == ["settings", "database", "clock", "redis", "upstream", "jwt keys"]
    assert lines["settings"].startswith("ok (env test")
    head = migrations_head()
    assert lines["database"].startswith("ok (") and f"schema at head {head}" in lines["database"]
    assert lines["upstream"] == "ok (simulated model: nothing to reach)"
    assert lines["jwt keys"].startswith("ok (2 key(s) from PARLEY_JWT_KEYS, newest 'k2' signs")
    if "redis_url" in backend_env:
        assert lines["redis"].startswith("ok (redis://127.0.0.1:6379/0, maxmemory-policy")
        assert "database clock" in lines["clock"] and lines["clock"].startswith("ok")
    else:
        assert lines["redis"].startswith("skipped (PARLEY_REDIS_URL is empty")
        assert lines["clock"] == "ok (embedded SQLite uses this machine's clock)"


def test_broken_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, tmp_path, port="eighty")
    code, lines = run()
    assert code == 1 and list(lines) == ["settings"]
    assert lines["settings"].startswith("FAIL PARLEY_PORT")
    setenv(monkeypatch, tmp_path, env="production")
    code, lines = run()
    assert code == 1 and "PARLEY_REDIS_URL" in lines["settings"]


def test_database_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, tmp_path, database_url=f"mysql+pymysql://root:pw@127.0.0.1:{free_port()}/x")
    code, lines = run()
    assert code == 1
    assert lines["database"].startswith("FAIL cannot reach mysql+pymysql://root:***@127.0.0.1")
    assert "pw@" not in lines["database"]
    assert lines["clock"] == "FAIL not checked: the database is unreachable"
    assert lines["jwt keys"].startswith("ok")  # the other checks still run


def test_database_not_migrated_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, tmp_path, database_url=f"sqlite:///{tmp_path}/fresh.db")
    code, lines = run()
    assert code == 1
    head = migrations_head()
    assert f"is at schema revision None, the migrations' head is {head}" in lines["database"]
    assert "parley migrate" in lines["database"]


@pytest.mark.mysql
def test_database_not_migrated_mysql(
    mysql_dbs: MySQLDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setenv(monkeypatch, tmp_path, database_url=mysql_dbs.create(migrate=False))
    code, lines = run()
    assert code == 1 and lines["database"].startswith("FAIL ")
    assert "schema revision None" in lines["database"]


@pytest.mark.mysql
def test_clock_skew(mysql_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, tmp_path, database_url=mysql_url)
    monkeypatch.setattr(check, "_now", lambda: time.time() + 30.0)
    code, lines = run()
    assert code == 1
    assert lines["clock"].startswith("FAIL database clock -30.")
    assert "fix NTP" in lines["clock"]


def test_redis_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    setenv(
        monkeypatch,
        tmp_path,
        database_url=sqlite_url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    code, lines = run()
    assert code == 1 and lines["redis"].startswith("FAIL cannot reach redis://127.0.0.1:")


def test_redis_url_option_the_server_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    setenv(
        monkeypatch,
        tmp_path,
        database_url=sqlite_url,
        redis_url="redis://127.0.0.1:6379/0?decode_responses=true",
    )
    code, lines = run()
    assert code == 1 and lines["settings"].startswith("FAIL")
    assert "unsupported Redis URL option(s): decode_responses" in lines["settings"]


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own (never the shared one) with a policy that evicts TTL keys."""
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.redis
def test_redis_evicting_policy(
    evicting_redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    setenv(monkeypatch, tmp_path, database_url=sqlite_url, redis_url=evicting_redis)
    code, lines = run()
    assert code == 1
    assert "maxmemory-policy volatile-lru" in lines["redis"]
    assert "may evict deny-list entries" in lines["redis"] and lines["redis"].startswith("FAIL")


def test_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    with running_fake_upstream(tokens=5, tps=500) as (_proc, base_url):
        setenv(
            monkeypatch,
            tmp_path,
            database_url=sqlite_url,
            llm_provider="openai",
            llm_base_url=base_url,
            llm_model="fake",
        )
        code, lines = run()
        assert code == 0 and lines["upstream"].startswith("skipped (")
        assert "not contacted" in lines["upstream"]
        code, lines = run(upstream=True)
        assert code == 0, lines
        assert lines["upstream"].startswith(f"ok ({base_url}, model fake: answered one token in")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("PARLEY_LLM_BASE_URL", dead)
    code, lines = run(upstream=True)
    assert code == 1 and lines["upstream"].startswith(f"FAIL {dead}, model fake: ")
    monkeypatch.setenv("PARLEY_LLM_BASE_URL", "")
    code, lines = run()
    assert (
        code == 1
        and lines["upstream"] == "FAIL PARLEY_LLM_PROVIDER=openai needs PARLEY_LLM_BASE_URL"
    )


def test_upstream_that_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        setenv(
            monkeypatch,
            tmp_path,
            database_url=sqlite_url,
            llm_provider="openai",
            llm_base_url=f"http://127.0.0.1:{port}/v1",
            llm_model="m",
            upstream_first_token_timeout="0.5",
        )
        code, lines = run(upstream=True)
    assert code == 1 and lines["upstream"].endswith("no answer within 0.5 s")


def test_bad_jwt_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    setenv(monkeypatch, tmp_path, database_url=sqlite_url, jwt_keys="k1:tooshort")
    code, lines = run()
    assert code == 1 and lines["jwt keys"].startswith("FAIL PARLEY_JWT_KEYS: each entry")
    setenv(monkeypatch, tmp_path, database_url=sqlite_url, jwt_keys=f"a:{'x' * 40},a:{'y' * 40}")
    code, lines = run()
    assert code == 1 and lines["jwt keys"] == "FAIL PARLEY_JWT_KEYS: key ids must be unique"


def test_the_command(tmp_path: Path, sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(PARLEY_DATABASE_URL=sqlite_url, PARLEY_DATA_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "server.cli", "check"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) == 6
    assert "jwt keys: ok (1 key(s) from development key in data dir" in r.stdout
    env["PARLEY_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "redis: FAIL cannot reach" in r.stdout
