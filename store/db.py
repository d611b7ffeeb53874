"""The database handle: a SQLAlchemy engine whose blocking calls run in threads.

Every call from trio goes through :meth:`Database.run`, i.e.
``trio.to_thread.run_sync`` with a :class:`trio.CapacityLimiter` sized to the
connection pool, so no more threads wait on the pool than it can serve.
"""

from __future__ import annotations

import datetime as dt
import functools
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection, Engine

__all__ = ["Database", "create_db_engine", "multi_statement_connection", "utcnow"]

T = TypeVar("T")


def utcnow() -> dt.datetime:
    """Naive UTC now, the form every ``Time`` column holds."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


TX_ATTEMPTS = 3
MULTI_POOL_SIZE = 2  # the turn-start lane's connections (one start transaction at a time)


def _retryable(exc: sa.exc.OperationalError) -> bool:
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    return code in (1213, 1205) or "database is locked" in str(orig)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the lock at BEGIN (no deadlock-prone lock upgrades); reads stay deferred.
    read = conn.get_execution_options().get("parley_read", False)
    conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")


def create_db_engine(url: str, *, pool_size: int = 10, multi_statements: bool = False) -> Engine:
    """An engine for ``sqlite:///path`` or ``mysql+pymysql://...``. ``multi_statements``
    (MySQL): its connections may send several statements in one round trip; only the turn
    start's lane asks for it (:func:`multi_statement_connection`)."""
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            hide_parameters=True,  # errors must not carry message text into the logs
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=pool_size,
            max_overflow=0,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; make writes take the lock at once
        sa.event.listen(engine, "begin", _sqlite_begin)

        @sa.event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    connect_args: dict[str, Any] = {
        "charset": "utf8mb4",
        "connect_timeout": 5,
        "read_timeout": 30,
        "write_timeout": 30,
    }
    if multi_statements:
        from pymysql.constants import CLIENT

        connect_args["client_flag"] = CLIENT.MULTI_STATEMENTS
    engine = sa.create_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        # both replaced below by checks that cost no round trip (pre-ping: one per checkout;
        # the rollback on return: one per transaction, after its commit too)
        pool_pre_ping=False,
        pool_reset_on_return=None,
        connect_args=connect_args,
    )
    if engine.dialect.driver == "pymysql":
        plain, lane = _pymysql_classes()
        cls = lane if multi_statements else plain

        @sa.event.listens_for(engine, "do_connect")
        def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            return cls(*cargs, **cparams)

    sa.event.listen(engine, "checkout", _mysql_checkout)
    sa.event.listen(engine, "reset", _mysql_reset)
    return engine


COMMITTED = "parley_committed"  # Connection.info: committed, nothing run since


@functools.cache
def _pymysql_classes() -> tuple[type[Any], type[Any]]:
    """pymysql's connection class as the engines use it: ordinary, and the lane's."""
    import ssl
    import threading

    import pymysql
    from pymysql.constants import SERVER_STATUS

    shared: list[ssl.SSLContext] = []
    lock = threading.Lock()

    class Connection(pymysql.connections.Connection):
        """pymysql's, but the TLS context it prepares when the URL asks for none (TLS if
        the server offers it, unverified) is built once per process, not per connection:
        building one loads the system's CA bundle, ~20 ms of CPU on this box, and a fresh
        server opens its pool's connections in its first burst of work."""

        def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
            build: Callable[[Any], ssl.SSLContext] = super()._create_ssl_ctx  # type: ignore[misc]
            if sslp:  # the URL's own TLS settings: pymysql's context, as they say
                return build(sslp)
            with lock:
                if not shared:
                    shared.append(build(sslp))
            return shared[0]

    class LaneConnection(Connection):
        """A connection of the turn-start lane. Its statements may end with their own
        COMMIT, in the same round trip as the writes (:meth:`mark_committed`); the
        transaction's commit then sends nothing, provided nothing ran since: a COMMIT of
        its own is one round trip more in every turn start."""

        server_status: int  # pymysql's, from the last OK packet
        _result: object | None  # pymysql's: the last statement's result
        _in_band: object | None = None

        def mark_committed(self) -> None:
            """The statements just read ended with COMMIT (the server says no transaction
            is open): the coming :meth:`commit` has nothing left to do."""
            if self.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
                raise RuntimeError("the statements left their transaction open")
            self._in_band = self._result

        def commit(self) -> None:
            # pymysql keeps the last statement's result: the same object, nothing ran since
            done, self._in_band = self._in_band, None
            if done is None or done is not self._result:
                super().commit()

    return Connection, LaneConnection


def _mysql_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """A kept connection the server closed (restart, KILL, wait_timeout) is readable: it
    holds the end of the stream, or an error packet. The pool replaces it at once, without
    the round trip a ping costs (go-sql-driver/mysql checks its connections the same way).
    ``poll``, not ``select``: a server holding thousands of WebSockets opens its database
    connections above descriptor 1023, which ``select`` cannot watch."""
    sock = getattr(dbapi_conn, "_sock", None)
    try:
        if sock is None:
            closed = True
        else:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            closed = bool(poller.poll(0))
    except (OSError, ValueError):
        closed = True
    if closed:
        raise sa.exc.DisconnectionError("the server closed this kept connection")


def _mysql_reset(dbapi_conn: Any, record: Any, state: Any) -> None:
    """On return to the pool, roll back what may still be open: not after
    :meth:`Database.tx` committed (``COMMITTED``) nor when the Connection rolled back itself
    (``transaction_was_reset``); a closed socket has nothing to roll back."""
    committed = record.info.pop(COMMITTED, False) if record is not None else False
    if state.terminate_only or state.transaction_was_reset or committed:
        return
    if getattr(dbapi_conn, "open", True):
        dbapi_conn.rollback()


def multi_statement_connection(conn: Connection) -> Any | None:
    """The DBAPI connection under ``conn`` when it may send several statements in one
    round trip and commit in band (a connection of :meth:`Database.tx`'s lane, pymysql
    opened with multi-statements); else None."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return None
    dbapi = conn.connection.dbapi_connection
    flag = getattr(dbapi, "client_flag", 0)
    from pymysql.constants import CLIENT

    multi = isinstance(flag, int) and flag & CLIENT.MULTI_STATEMENTS
    return dbapi if multi and isinstance(dbapi, _pymysql_classes()[1]) else None


class Database:
    """Run blocking SQL from trio, bounded by the pool size."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_db_engine(url, pool_size=pool_size)
        self.limiter = trio.CapacityLimiter(pool_size)
        self.is_sqlite = url.startswith("sqlite")
        # SQLite has one writer at a time, and its busy handler waits by sleeping (up to
        # 100 ms a try): queue writers here instead, in order, without sleeping
        # (200 concurrent turn starts: 147 ms in all, against 198 ms through the pool).
        self.write_limiter = trio.CapacityLimiter(1) if self.is_sqlite else self.limiter
        # MySQL: the turn starts' lane, connections that may send several statements at
        # once (store/turn_start.py); group commit runs one start transaction at a time.
        # SQLite: the ordinary engine and its one writer.
        self.multi_engine, self.multi_limiter = self.engine, self.write_limiter
        if not self.is_sqlite:
            self.multi_engine = create_db_engine(
                url, pool_size=MULTI_POOL_SIZE, multi_statements=True
            )
            self.multi_limiter = trio.CapacityLimiter(MULTI_POOL_SIZE)

    async def tx(self, fn: Callable[[Connection], T], *, multi_statements: bool = False) -> T:
        """Run ``fn(conn)`` in one transaction, in a worker thread.

        A deadlock or lock-wait timeout (MariaDB 1213/1205, SQLite "database is locked")
        rolls the transaction back; it is run again, up to 3 times. ``multi_statements``:
        on MySQL, ``conn`` comes from the lane whose connections may send several
        statements in one round trip (:func:`multi_statement_connection`); elsewhere the
        ordinary one.
        """
        return await trio.to_thread.run_sync(
            functools.partial(self.run_tx, fn, multi_statements=multi_statements),
            limiter=self.multi_limiter if multi_statements else self.write_limiter,
        )

    def run_tx(self, fn: Callable[[Connection], T], *, multi_statements: bool = False) -> T:
        """:meth:`tx` on the calling thread (blocking)."""
        engine = self.multi_engine if multi_statements else self.engine
        for attempt in range(TX_ATTEMPTS):
            try:
                with engine.connect() as conn:
                    with conn.begin():
                        result = fn(conn)
                    if not self.is_sqlite:  # nothing to roll back on return
                        conn.info[COMMITTED] = True
                    return result
            except sa.exc.OperationalError as exc:
                if attempt + 1 == TX_ATTEMPTS or not _retryable(exc):
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` outside an explicit write transaction (reads)."""

        def work() -> T:
            with self.engine.connect().execution_options(parley_read=True) as conn:
                return fn(conn)

        return await trio.to_thread.run_sync(work, limiter=self.limiter)

    async def ping(self) -> bool:
        try:
            await self.read(lambda c: c.execute(sa.text("SELECT 1")).scalar())
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()
        if self.multi_engine is not self.engine:
            self.multi_engine.dispose()
