"""The `parley` command: migrate, admin grant, jobs, and the settings refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from store.db import create_db_engine
from store.migrate import current_revision
from store.schema import users
from tests.conftest import TEST_JWT_KEYS, MySQLDatabases

PARLEY = [sys.executable, "-m", "server.cli"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PARLEY + args, env=env, capture_output=True, text=True, timeout=60)


def base_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATABASE_URL=db_url, PARLEY_DATA_DIR=str(tmp_path), PARLEY_JWT_KEYS=TEST_JWT_KEYS
    )
    return env


def make_user(url: str, email: str) -> None:
    from store import users as repo

    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            repo.create_user(conn, kind="registered", email=email, password_hash="x")
    finally:
        engine.dispose()


def role_of(url: str, email: str) -> str:
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return str(
                conn.execute(sa.select(users.c.role).where(users.c.email == email)).scalar_one()
            )
    finally:
        engine.dispose()


def check_migrate_and_grant(tmp_path: Path, url: str) -> None:
    env = base_env(tmp_path, url)
    r = run(["migrate"], env)
    assert r.returncode == 0, r.stderr
    assert "database at revision 0002" in r.stdout
    assert current_revision(url) == "0002"
    make_user(url, "boss@example.com")
    r = run(["admin", "grant", "BOSS@example.com"], env)
    assert r.returncode == 0, r.stderr
    assert role_of(url, "boss@example.com") == "admin"
    r = run(["admin", "grant", "nobody@example.com"], env)
    assert r.returncode == 1 and "no user" in r.stderr
    r = run(["jobs", "run", "retention"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("retention: purged ") and r.stdout.count("\n") == 1


def test_migrate_and_grant_sqlite(tmp_path: Path) -> None:
    check_migrate_and_grant(tmp_path, f"sqlite:///{tmp_path}/cli.db")


@pytest.mark.mysql
def test_migrate_and_grant_mariadb(tmp_path: Path, mysql_dbs: MySQLDatabases) -> None:
    check_migrate_and_grant(tmp_path, mysql_dbs.create(migrate=False))


def test_production_refusal_exit_2(tmp_path: Path) -> None:
    env = base_env(tmp_path, f"sqlite:///{tmp_path}/p.db")
    env["PARLEY_ENV"] = "production"
    del env["PARLEY_JWT_KEYS"]
    r = run(["serve"], env)
    assert r.returncode == 2
    assert "PARLEY_JWT_KEYS" in r.stderr and "PARLEY_REDIS_URL" in r.stderr


def test_unknown_job_and_usage(tmp_path: Path) -> None:
    env = base_env(tmp_path, f"sqlite:///{tmp_path}/j.db")
    r = run(["jobs", "run", "nope"], env)
    assert r.returncode == 2 and "invalid choice" in r.stderr
