"""Shared fixtures: the two backends (SQLite + memory cache, MariaDB + Redis).

MariaDB and Redis are real servers (127.0.0.1:3306 and :6379, started by
``make test``). Each test session makes its own database and drops it at the
end; Redis keys carry random ids, so runs never collide. A backend that is
down fails the tests that need it: nothing is skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pymysql
import pytest

from server.auth.passwords import PasswordService
from server.settings import Settings
from store.migrate import upgrade_to_head

MYSQL_HOST = os.environ.get("PARLEY_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("PARLEY_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("PARLEY_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("PARLEY_TEST_MYSQL_PASSWORD", "")
REDIS_URL = os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_JWT_KEYS = "k2:" + "b" * 40 + ",k1:" + "a" * 40

BACKENDS = ["sqlite", pytest.param("mysql", marks=[pytest.mark.mysql, pytest.mark.redis])]


def _mysql_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
    )


class MySQLDatabases:
    """Creates uniquely named databases and drops them all at the end of the session."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def url(self, name: str) -> str:
        auth = MYSQL_USER + (f":{MYSQL_PASSWORD}" if MYSQL_PASSWORD else "")
        return f"mysql+pymysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"

    def create(self, *, migrate: bool = True) -> str:
        name = f"parley_test_{secrets.token_hex(5)}"
        conn = _mysql_admin()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()
        self.names.append(name)
        url = self.url(name)
        if migrate:
            upgrade_to_head(url)
        return url

    def drop_all(self) -> None:
        if not self.names:
            return
        conn = _mysql_admin()
        try:
            with conn.cursor() as cur:
                for name in self.names:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@pytest.fixture(scope="session")
def mysql_dbs() -> Iterator[MySQLDatabases]:
    dbs = MySQLDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def mysql_url(mysql_dbs: MySQLDatabases) -> str:
    """One migrated MariaDB database for the whole session."""
    return mysql_dbs.create()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "parley.db"
    url = f"sqlite:///{path}"
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def fast_passwords() -> PasswordService:
    # Real argon2id, with cheap parameters so tests stay fast (unit tests check the real ones).
    return PasswordService(time_cost=1, memory_cost=1024, parallelism=1)


def make_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, **overrides: object
) -> Settings:
    if backend == "sqlite":
        db_url, redis_url = request.getfixturevalue("sqlite_url"), ""
    else:
        db_url, redis_url = request.getfixturevalue("mysql_url"), REDIS_URL
    values: dict[str, object] = {
        "env": "test",
        "database_url": db_url,
        "redis_url": redis_url,
        "jwt_keys": TEST_JWT_KEYS,
        "trust_proxy_headers": True,
        "data_dir": tmp_path,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return make_settings(backend, request, tmp_path)


@pytest.fixture
async def api(settings: Settings, fast_passwords: PasswordService) -> AsyncIterator[object]:
    from server.app import create_app
    from server.services import build_services
    from tests.support.api import ApiClient

    svc = build_services(settings, passwords=fast_passwords)
    app = create_app(svc)
    async with app.test_app() as test_app:
        yield ApiClient(test_app.test_client(), svc)
