"""``parley jobs run backup``: one consistent, compressed, checksummed backup.

MySQL/MariaDB: the dump is written through the client library from inside ONE
``START TRANSACTION WITH CONSISTENT SNAPSHOT`` (REPEATABLE READ, read only). The
manifest's row counts and checksums are computed from the very rows being written, and
the schema revision and the binary-log position (MariaDB's ``binlog_snapshot_*``, the
position that matches this snapshot) are read in the same transaction. A separate
``mariadb-dump --single-transaction`` process would take its own snapshot, and counting
rows in another one could never be proved to match it; ``--master-data`` would take a
global read lock (``FLUSH TABLES WITH READ LOCK``) for a moment, which stalls every
write. InnoDB's snapshot reads take no row locks, so chat traffic goes on; only DDL
(a migration) waits for the backup's metadata locks. The dump is plain SQL that
``mariadb`` loads (one statement per line for the rows, ``CREATE TABLE`` as the server
shows it), ending with a completion marker.

SQLite: the online backup API copies the database in one step (a read transaction: in
WAL mode writers go on), the manifest is computed from the copy (the copy is the
snapshot), and the copy is compressed.

Files: ``parley-<UTC time>.sql.gz`` (or ``.sqlite.gz``) and ``parley-<UTC time>.json``
(the manifest, written last) in ``PARLEY_BACKUP_DIR``; each written under a temporary
name, synced, then renamed. The newest ``PARLEY_BACKUP_KEEP`` are kept. One backup at a
time (a lock file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gzip
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from jobs.dumpfmt import (
    FORMAT,
    JobFailed,
    TableSum,
    mysql_connect,
    mysql_literal_row,
    mysql_primary_key,
    mysql_select_ordered,
    mysql_tables,
    sqlite_path,
    sqlite_table_sums,
)
from server.settings import Settings

__all__ = ["DUMP_END", "BackupResult", "list_backups", "run_backup"]

#: The dump's last line: a dump without it was cut short.
DUMP_END = "-- parley dump complete"
#: Rows per INSERT statement are bounded by this many bytes of SQL.
STATEMENT_BYTES = 1 << 20
COMPRESS_LEVEL = 3  # zlib: level 3 is several times cheaper in CPU than the default 6


@dataclass
class BackupResult:
    dump: Path
    manifest: Path
    info: dict[str, Any]
    removed: list[str]

    def line(self) -> str:
        tables = self.info["tables"]
        rows = sum(t["rows"] for t in tables.values())
        size = self.info["dumpBytes"] / (1 << 20)
        return (
            f"backup ok: {self.dump} ({size:.1f} MiB, {len(tables)} tables, {rows:,} rows, "
            f"schema {self.info['schemaRevision']}, {self.info['seconds']:.1f} s); "
            f"removed {len(self.removed)} old backup(s)"
        )


class _HashingWriter:
    """A file wrapper that hashes and counts what goes through it (the compressed bytes)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_gzip(final: Path) -> Iterator[tuple[gzip.GzipFile, _HashingWriter]]:
    """Write ``final`` compressed, under a temporary name, synced, then renamed."""
    tmp = final.with_name("." + final.name + ".tmp")
    with open(tmp, "wb") as raw:
        hw = _HashingWriter(raw)
        try:
            gz = gzip.GzipFile(
                filename="", fileobj=hw, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0
            )
            with gz:
                yield gz, hw
            raw.flush()
            os.fsync(raw.fileno())
        except BaseException:
            raw.close()
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_json_atomic(final: Path, body: dict[str, Any]) -> None:
    tmp = final.with_name("." + final.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(body, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"


def list_backups(directory: Path) -> list[Path]:
    """Manifests in ``directory``, oldest first (their names sort by time)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("parley-*.json") if p.is_file())


# -- MySQL / MariaDB --------------------------------------------------------------------


def _mysql_non_tables(cur: Any) -> str:
    """Views, triggers, routines and events: the dump holds tables only."""
    found = []
    for what, sql in (
        ("view", "SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()"),
        (
            "trigger",
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
        ),
        (
            "routine",
            "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()",
        ),
        ("event", "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()"),
    ):
        cur.execute(sql)
        n = int(cur.fetchone()[0])
        if n:
            found.append(f"{n} {what}(s)")
    return ", ".join(found)


def _dump_mysql(url: str, out: gzip.GzipFile) -> dict[str, Any]:
    import pymysql.cursors

    conn = mysql_connect(url)
    sums: dict[str, TableSum] = {}
    try:
        cur = conn.cursor()
        cur.execute("SET SESSION net_write_timeout = 3600")
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        binlog: dict[str, Any] | None = None
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
        if status.get("binlog_snapshot_file"):
            binlog = {
                "file": status["binlog_snapshot_file"],
                "position": int(status.get("binlog_snapshot_position", "0")),
            }
        extras = _mysql_non_tables(cur)
        if extras:
            raise JobFailed(
                f"the database holds {extras}, which this backup does not carry "
                "(Parley's schema has none)"
            )
        tables = mysql_tables(cur)
        revision: str | None = None
        if "alembic_version" in tables:
            cur.execute("SELECT version_num FROM alembic_version")
            row = cur.fetchone()
            revision = str(row[0]) if row else None
        cur.execute("SELECT DATABASE(), VERSION()")
        dbname, version = cur.fetchone()
        w = out.write
        w(
            f"-- {FORMAT} of database `{dbname}` (server {version}), schema revision {revision}\n"
            "SET NAMES utf8mb4;\nSET FOREIGN_KEY_CHECKS=0;\nSET UNIQUE_CHECKS=0;\n"
            "SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO';\n".encode()
        )
        for table in tables:
            pk = mysql_primary_key(cur, table)
            cur.execute(f"SHOW CREATE TABLE `{table}`")
            create = str(cur.fetchone()[1])
            w(f"DROP TABLE IF EXISTS `{table}`;\n{create};\n".encode())
            s = sums[table] = TableSum()
            data = conn.cursor(pymysql.cursors.SSCursor)
            try:
                # table and key names come from the live schema, never from input
                data.execute(mysql_select_ordered(table, pk))
                head = f"INSERT INTO `{table}` VALUES ".encode()  # noqa: S608
                batch: list[bytes] = []
                size = 0
                for row in data:
                    lit = mysql_literal_row(conn, row).encode("utf-8", "surrogateescape")
                    s.add(lit)
                    batch.append(lit)
                    size += len(lit) + 1
                    if size >= STATEMENT_BYTES:
                        w(head + b",".join(batch) + b";\n")
                        batch, size = [], 0
                if batch:
                    w(head + b",".join(batch) + b";\n")
            finally:
                data.close()
        cur.execute("COMMIT")
        w(f"SET FOREIGN_KEY_CHECKS=1;\nSET UNIQUE_CHECKS=1;\n{DUMP_END}\n".encode())
    finally:
        conn.close()
    return {
        "backend": "mysql",
        "database": str(dbname),
        "serverVersion": str(version),
        "schemaRevision": revision,
        "binlog": binlog,
        "tables": {t: s.as_json() for t, s in sums.items()},
    }


# -- SQLite -----------------------------------------------------------------------------


def _snapshot_sqlite(url: str, copy: Path) -> dict[str, Any]:
    source = sqlite_path(url)
    if not source.exists():
        raise JobFailed(f"no SQLite database at {source}")
    src = sqlite3.connect(str(source), timeout=10)
    dst = sqlite3.connect(str(copy))
    try:
        src.backup(dst)  # all pages in one step: one read transaction on the source
    finally:
        src.close()
    try:
        sums = sqlite_table_sums(dst)
        revision = None
        if "alembic_version" in sums:
            row = dst.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = str(row[0]) if row else None
    finally:
        dst.close()
    return {
        "backend": "sqlite",
        "database": str(source),
        "serverVersion": sqlite3.sqlite_version,
        "schemaRevision": revision,
        "binlog": None,
        "tables": {t: s.as_json() for t, s in sums.items()},
    }


# -- the job ------------------------------------------------------------------------------


def _prune(directory: Path, keep: int, current: Path) -> list[str]:
    manifests = list_backups(directory)
    kept = manifests[-keep:]
    removed: list[str] = []
    keep_dumps: set[str] = set()
    for m in kept:
        try:
            keep_dumps.add(str(json.loads(m.read_text())["dump"]))
        except (OSError, ValueError, KeyError, TypeError):
            keep_dumps.add(m.stem)
    for m in manifests[: len(manifests) - len(kept)]:
        m.unlink(missing_ok=True)
        removed.append(m.name)
    for d in list(directory.glob("parley-*.sql.gz")) + list(directory.glob("parley-*.sqlite.gz")):
        if d.name not in keep_dumps and d != current:
            d.unlink(missing_ok=True)
            removed.append(d.name)
    for t in directory.glob(".parley-*.tmp"):  # a run that died half way (we hold the lock)
        t.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".backup.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise JobFailed(f"another backup is running in {directory}") from exc
        yield


def run_backup(settings: Settings, *, now: dt.datetime | None = None) -> BackupResult:
    """Write one backup and its manifest, then keep the newest ``backup_keep``."""
    directory = settings.backup_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobFailed(f"cannot create PARLEY_BACKUP_DIR {directory}: {exc}") from exc
    started = time.monotonic()
    when = now or dt.datetime.now(dt.UTC)
    stem = f"parley-{_stamp(when)}"
    with _locked(directory):
        if settings.is_sqlite:
            dump = directory / f"{stem}.sqlite.gz"
            copy = directory / f".{stem}.sqlite.tmp"
            try:
                info = _snapshot_sqlite(settings.database_url, copy)
                with _atomic_gzip(dump) as (gz, hw), open(copy, "rb") as f:
                    while chunk := f.read(1 << 20):
                        gz.write(chunk)
            finally:
                copy.unlink(missing_ok=True)
        else:
            dump = directory / f"{stem}.sql.gz"
            try:
                with _atomic_gzip(dump) as (gz, hw):
                    info = _dump_mysql(settings.database_url, gz)
            except sa.exc.ArgumentError as exc:  # pragma: no cover - the settings validate it
                raise JobFailed(f"PARLEY_DATABASE_URL: {exc}") from exc
        info.update(
            format=FORMAT,
            createdAt=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            dump=dump.name,
            dumpBytes=hw.size,
            dumpSha256=hw.sha.hexdigest(),
            seconds=round(time.monotonic() - started, 3),
        )
        manifest = directory / f"{stem}.json"
        _write_json_atomic(manifest, info)
        removed = _prune(directory, settings.backup_keep, dump)
    return BackupResult(dump, manifest, info, removed)
