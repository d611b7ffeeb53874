"""The MySQL connection pool: kept connections checked without a round trip, returned
without a redundant rollback, and never handed on with a transaction open."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import trio

from store import users as users_repo
from store.db import Database
from store.schema import users
from tests.conftest import _mysql_admin

pytestmark = pytest.mark.mysql


@pytest.fixture
def db(mysql_url: str) -> Iterator[Database]:
    database = Database(mysql_url, pool_size=1)
    yield database
    database.dispose()


def _thread_id(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())


def test_a_connection_the_server_closed_is_replaced_at_checkout(db: Database) -> None:
    first = trio.run(db.read, _thread_id)
    admin = _mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"KILL CONNECTION {first}")
            for _ in range(200):  # its thread ends, and closes the socket, just after
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (first,)
                )
                if cur.fetchone() == (0,):
                    break
                time.sleep(0.01)
    finally:
        admin.close()
    # the pool's one kept connection is dead: the next call gets a new one, and no error
    second = trio.run(db.tx, _thread_id)
    assert second != first
    assert trio.run(db.read, _thread_id) == second  # the new one is kept


def test_a_connection_above_descriptor_1023_is_kept(db: Database) -> None:
    """A server holding thousands of WebSockets opens its database connections there
    (``select()`` cannot watch such a descriptor: every checkout failed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        db.dispose()  # the next connection is opened now, above the fillers
        first = trio.run(db.read, _thread_id)
        raw = db.engine.raw_connection()
        try:
            assert raw.driver_connection._sock.fileno() > 1023  # type: ignore[union-attr]
        finally:
            raw.close()
        assert trio.run(db.tx, _thread_id) == first  # checked out again, kept
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_what_a_caller_left_open_is_rolled_back_on_return(db: Database, mysql_url: str) -> None:
    with db.engine.begin() as c:
        user = users_repo.create_user(c, kind="guest")
    raw = db.engine.raw_connection()  # no Connection to end its transaction
    cur = raw.cursor()
    cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user.id,))
    cur.close()
    raw.close()  # back to the pool: the reset must release the row lock
    other = _mysql_admin()
    try:
        with other.cursor() as c2:
            c2.execute(f"USE {sa.engine.make_url(mysql_url).database}")
            c2.execute("SET SESSION innodb_lock_wait_timeout = 1")
            c2.execute("BEGIN")
            c2.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user.id,))
            assert c2.fetchone() == (user.id,)
            c2.execute("ROLLBACK")
    finally:
        other.close()


def test_a_failed_transaction_leaves_nothing_for_the_next(db: Database) -> None:
    with db.engine.begin() as c:
        user = users_repo.create_user(c, kind="guest")

    def fail(conn: sa.Connection) -> None:
        conn.execute(users.update().where(users.c.id == user.id).values(display_name="half"))
        raise RuntimeError("after the first statement")

    with pytest.raises(RuntimeError):
        trio.run(db.tx, fail)
    # the same (only) connection again: the update was rolled back, not committed later
    trio.run(db.tx, lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one())
    name = trio.run(
        db.read,
        lambda conn: conn.execute(
            sa.select(users.c.display_name).where(users.c.id == user.id)
        ).scalar_one(),
    )
    assert name is None


def test_reads_see_what_was_committed_since_the_last_call(db: Database) -> None:
    # a read leaves no snapshot open on the kept connection (REPEATABLE READ would show the
    # old row to the next call otherwise)
    with db.engine.begin() as c:
        user = users_repo.create_user(c, kind="guest")

    def name_of(conn: sa.Connection) -> Any:
        return conn.execute(
            sa.select(users.c.display_name).where(users.c.id == user.id)
        ).scalar_one()

    assert trio.run(db.read, name_of) is None
    other = sa.create_engine(str(db.engine.url.render_as_string(hide_password=False)))
    with other.begin() as c:
        c.execute(users.update().where(users.c.id == user.id).values(display_name="new"))
    other.dispose()
    assert trio.run(db.read, name_of) == "new"
    assert trio.run(db.tx, name_of) == "new"


def test_connections_share_one_default_tls_context_and_the_urls_own_get_theirs(
    mysql_url: str,
) -> None:
    """Without TLS settings in the URL pymysql prepares a context per connection (the
    system's CA bundle loaded each time, ~20 ms of CPU); the engines build it once. TLS
    settings in the URL still get a context of their own, made from them."""
    from store.db import _pymysql_classes, create_db_engine

    engines = [
        create_db_engine(mysql_url, pool_size=2),
        create_db_engine(mysql_url, pool_size=2, multi_statements=True),
    ]
    try:
        raws = [e.raw_connection() for e in engines for _ in range(2)]
        contexts = {id(r.dbapi_connection.ctx) for r in raws}  # type: ignore[union-attr]
        assert len(contexts) == 1
        for r in raws:
            r.close()
    finally:
        for e in engines:
            e.dispose()
    # TLS asked for (here: required, unverified; nothing is connected)
    plain, _lane = _pymysql_classes()
    own = plain(host="127.0.0.1", ssl={"verify_mode": False}, defer_connect=True)
    assert own.ctx is not None and id(own.ctx) not in contexts
