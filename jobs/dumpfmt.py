"""What a backup and a restore check share: connections, table walks, row checksums.

A table's checksum is the SHA-256 of its rows in primary-key order, each row encoded
as one canonical literal line. On MySQL/MariaDB the line is exactly the SQL tuple the
dump writes (``('id','text',NULL,...)``, escaped by the client library), so the backup
hashes what it writes, and the restore check re-encodes what it reads back the same way.
On SQLite the line is an unambiguous literal of the stored value (quotes doubled, blobs
in hex). Both sides of a comparison use the same backend, so the encodings never meet.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

__all__ = [
    "FORMAT",
    "JobFailed",
    "TableSum",
    "migrations_head",
    "mysql_connect",
    "mysql_literal_row",
    "mysql_primary_key",
    "mysql_tables",
    "same_mysql_database",
    "sqlite_literal_row",
    "sqlite_path",
    "sqlite_table_sums",
]

FORMAT = "parley-backup/1"


class JobFailed(Exception):
    """A job failed; the message is the one line the command prints."""


@dataclass
class TableSum:
    """Row count and checksum of one table, built row by row."""

    rows: int = 0
    _hash: Any = None

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, line: bytes) -> None:
        self.rows += 1
        self._hash.update(line)
        self._hash.update(b"\n")

    @property
    def sha256(self) -> str:
        return str(self._hash.hexdigest())

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "sha256": self.sha256}


def migrations_head() -> str | None:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    from store.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


# -- MySQL / MariaDB ------------------------------------------------------------------


def mysql_connect(url: str, *, database: str | None = "", **extra: Any) -> Any:
    """A plain PyMySQL connection for ``url`` (``database=None``: no default database)."""
    import pymysql

    u = sa.engine.make_url(url)
    kwargs: dict[str, Any] = {
        "host": u.host or "localhost",
        "port": u.port or 3306,
        "user": u.username or "",
        "password": u.password or "",
        "charset": "utf8mb4",
        "connect_timeout": 5,
        "autocommit": True,
    }
    if "unix_socket" in u.query:
        kwargs["unix_socket"] = str(u.query["unix_socket"])
    if database is not None:
        kwargs["database"] = database or u.database
    kwargs.update(extra)
    return pymysql.connect(**kwargs)


def mysql_tables(cur: Any) -> list[str]:
    cur.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
    )
    return [str(r[0]) for r in cur.fetchall()]


def mysql_primary_key(cur: Any, table: str) -> list[str]:
    cur.execute(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY'"
        " ORDER BY ORDINAL_POSITION",
        (table,),
    )
    cols = [str(r[0]) for r in cur.fetchall()]
    if not cols:
        raise JobFailed(f"table {table} has no primary key: its rows have no stable order")
    return cols


def mysql_select_ordered(table: str, pk: list[str]) -> str:
    order = ", ".join(f"`{c}`" for c in pk)
    # names from the database's own catalogue (backup, restore-check), never from input
    return f"SELECT * FROM `{table}` ORDER BY {order}"  # noqa: S608


def mysql_literal_row(conn: Any, row: Iterable[Any]) -> str:
    return "(" + ",".join(map(conn.escape, row)) + ")"


def _resolve(host: str) -> set[str]:
    try:
        return {str(a[4][0]) for a in socket.getaddrinfo(host, None)}
    except OSError:
        return {host}


def same_mysql_database(a: str, b: str) -> bool:
    """Same database name on the same server (host names resolved, ``localhost`` included)."""
    ua, ub = sa.engine.make_url(a), sa.engine.make_url(b)
    if (ua.database or "") != (ub.database or "") or (ua.port or 3306) != (ub.port or 3306):
        return False
    ha, hb = ua.host or "localhost", ub.host or "localhost"
    return ha == hb or bool(_resolve(ha) & _resolve(hb))


# -- SQLite -----------------------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    db = sa.engine.make_url(url).database
    if not db or db == ":memory:":
        raise JobFailed(f"backup needs an SQLite file, not {url!r}")
    return Path(db)


def _sqlite_literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "X'" + v.hex() + "'"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def sqlite_literal_row(row: Iterable[Any]) -> str:
    return "(" + ",".join(_sqlite_literal(v) for v in row) + ")"


def _sqlite_rows(conn: Any, table: str) -> Iterator[tuple[Any, ...]]:
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    pk = [r[1] for r in sorted((r for r in info if r[5] > 0), key=lambda r: r[5])]
    order = ", ".join(f'"{c}"' for c in pk) if pk else "rowid"
    yield from conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')  # noqa: S608 (catalogue names)


def sqlite_table_sums(conn: Any) -> dict[str, TableSum]:
    """Counts and checksums of every table of an SQLite connection, in one read."""
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    sums: dict[str, TableSum] = {}
    for t in tables:
        s = sums[t] = TableSum()
        for row in _sqlite_rows(conn, t):
            s.add(sqlite_literal_row(row).encode())
    return sums
