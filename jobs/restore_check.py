"""``parley jobs run restore-check``: prove the newest backup restores.

1. The newest manifest in ``PARLEY_BACKUP_DIR``; its dump's size and SHA-256 must match.
2. The manifest's schema revision must be the migrations' head.
3. The dump is restored into a scratch database: ``PARLEY_RESTORE_CHECK_DATABASE_URL``,
   by default the live server with the database name + ``_restore_check`` (SQLite: a
   temporary file). The live database is refused.
4. The restored schema must be at the head; every table's row count and checksum must
   equal the manifest's (no table missing, none extra); SQLite also passes
   ``PRAGMA integrity_check``.
5. The scratch database is dropped, whatever happened.

Any mismatch raises :class:`JobFailed` with one line naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs.backup import DUMP_END, list_backups
from jobs.dumpfmt import (
    FORMAT,
    JobFailed,
    TableSum,
    migrations_head,
    mysql_connect,
    mysql_literal_row,
    mysql_primary_key,
    mysql_select_ordered,
    mysql_tables,
    same_mysql_database,
    sqlite_path,
    sqlite_table_sums,
)
from server.settings import Settings

__all__ = ["RestoreReport", "run_restore_check", "scratch_url"]

SUFFIX = "_restore_check"


@dataclass
class RestoreReport:
    manifest: Path
    scratch: str
    tables: int
    rows: int
    revision: str | None
    seconds: float

    def line(self) -> str:
        return (
            f"restore-check ok: {self.manifest.name} restored into {self.scratch}: "
            f"{self.tables} tables, {self.rows:,} rows, counts and checksums match, "
            f"schema {self.revision} (head), {self.seconds:.1f} s; scratch dropped"
        )


def scratch_url(settings: Settings) -> str:
    """The scratch database URL; refuses the live database."""
    live = settings.database_url
    url = settings.restore_check_database_url.strip()
    if settings.is_sqlite:
        if not url:
            return ""  # a temporary file, made by the check
        if not url.startswith("sqlite"):
            raise JobFailed("PARLEY_RESTORE_CHECK_DATABASE_URL must be an SQLite URL here")
        if sqlite_path(url).resolve() == sqlite_path(live).resolve():
            raise JobFailed("PARLEY_RESTORE_CHECK_DATABASE_URL is the live database: refused")
        return url
    if not url:
        u = sa.engine.make_url(live)
        url = u.set(database=f"{u.database}{SUFFIX}").render_as_string(hide_password=False)
    if not url.startswith("mysql"):
        raise JobFailed("PARLEY_RESTORE_CHECK_DATABASE_URL must be a mysql+pymysql:// URL here")
    if not sa.engine.make_url(url).database:
        raise JobFailed("PARLEY_RESTORE_CHECK_DATABASE_URL names no database")
    if same_mysql_database(url, live):
        raise JobFailed("PARLEY_RESTORE_CHECK_DATABASE_URL is the live database: refused")
    return url


def _shown(url: str) -> str:
    if not url.startswith("mysql"):
        return url
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _load_manifest(directory: Path) -> tuple[Path, dict[str, Any], Path]:
    manifests = list_backups(directory)
    if not manifests:
        raise JobFailed(f"no backup in {directory} (run: parley jobs run backup)")
    path = manifests[-1]
    try:
        info = json.loads(path.read_text())
        dump = directory / str(info["dump"])
        tables = info["tables"]
        if info.get("format") != FORMAT or not isinstance(tables, dict):
            raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobFailed(f"manifest {path.name} is unreadable: {exc}") from exc
    if not dump.is_file():
        raise JobFailed(f"dump {dump.name} named by {path.name} is missing")
    sha = hashlib.sha256()
    size = 0
    with open(dump, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    if size != info.get("dumpBytes") or sha.hexdigest() != info.get("dumpSha256"):
        raise JobFailed(f"dump {dump.name} does not match its manifest (size or SHA-256)")
    return path, info, dump


def _compare(expected: dict[str, Any], got: dict[str, TableSum]) -> int:
    missing = sorted(set(expected) - set(got))
    if missing:
        raise JobFailed(f"restored database lacks table(s) {', '.join(missing)}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise JobFailed(f"restored database has table(s) not in the manifest: {', '.join(extra)}")
    for name in sorted(expected):
        want, have = expected[name], got[name]
        if have.rows != want.get("rows"):
            raise JobFailed(
                f"table {name}: {have.rows} rows restored, manifest says {want.get('rows')}"
            )
        if have.sha256 != want.get("sha256"):
            raise JobFailed(f"table {name}: checksum differs from the manifest")
    return sum(s.rows for s in got.values())


def _check_revision(where: str, revision: str | None, head: str | None) -> None:
    if revision != head:
        raise JobFailed(f"{where} is at schema revision {revision}, the migrations' head is {head}")


@contextlib.contextmanager
def _gunzipped(dump: Path) -> Iterator[gzip.GzipFile]:
    try:
        with gzip.open(dump, "rb") as f:
            yield f
    except (OSError, EOFError, zlib.error) as exc:
        raise JobFailed(f"dump {dump.name} is unreadable: {exc}") from exc


# -- SQLite -----------------------------------------------------------------------------


def _check_sqlite(dump: Path, target: str, info: dict[str, Any]) -> tuple[int, str | None]:
    if target:
        path = sqlite_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        cleanup_dir = None
    else:
        cleanup_dir = tempfile.mkdtemp(prefix="parley-restore-check-")
        path = Path(cleanup_dir) / "restore.db"
    try:
        with _gunzipped(dump) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        conn = sqlite3.connect(str(path))
        try:
            try:
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise JobFailed(f"restored file is not a sound SQLite database: {exc}") from exc
            if ok != "ok":
                raise JobFailed(f"restored SQLite database fails integrity_check: {ok}")
            sums = sqlite_table_sums(conn)
            revision = None
            if "alembic_version" in sums:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = str(row[0]) if row else None
        finally:
            conn.close()
        _check_revision("the restored database", revision, migrations_head())
        return _compare(info["tables"], sums), revision
    finally:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        if cleanup_dir:
            shutil.rmtree(cleanup_dir, ignore_errors=True)


# -- MySQL / MariaDB --------------------------------------------------------------------


def _statements(stream: Any) -> Iterator[str]:
    """Statements of a Parley dump: row lines are whole statements; CREATE TABLE spans
    lines until one ends with ``;``. Raises if the completion marker is missing."""
    buf: list[str] = []
    complete = False
    for raw in stream:
        line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
        if line == DUMP_END:
            complete = True
            continue
        if not buf and (not line or line.startswith("-- ")):
            continue
        buf.append(line)
        if line.endswith(";"):
            yield "\n".join(buf)
            buf = []
    if buf or not complete:
        raise JobFailed("dump is cut short (no completion marker)")


def _restore_mysql(dump: Path, target: str) -> None:
    name = str(sa.engine.make_url(target).database)
    admin = mysql_connect(target, database=None)
    try:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    finally:
        admin.close()
    conn = mysql_connect(target, autocommit=False)
    try:
        with conn.cursor() as cur, _gunzipped(dump) as src:
            for stmt in _statements(src):
                try:
                    cur.execute(stmt)
                except Exception as exc:
                    raise JobFailed(f"dump statement failed to load: {exc}") from exc
        conn.commit()
    finally:
        conn.close()


def _sums_mysql(target: str) -> tuple[dict[str, TableSum], str | None]:
    import pymysql.cursors

    conn = mysql_connect(target)
    try:
        cur = conn.cursor()
        tables = mysql_tables(cur)
        revision = None
        if "alembic_version" in tables:
            cur.execute("SELECT version_num FROM alembic_version")
            row = cur.fetchone()
            revision = str(row[0]) if row else None
        sums: dict[str, TableSum] = {}
        for table in tables:
            pk = mysql_primary_key(cur, table)
            s = sums[table] = TableSum()
            data = conn.cursor(pymysql.cursors.SSCursor)
            try:
                data.execute(mysql_select_ordered(table, pk))
                for row in data:
                    s.add(mysql_literal_row(conn, row).encode("utf-8", "surrogateescape"))
            finally:
                data.close()
        return sums, revision
    finally:
        conn.close()


def _drop_mysql(target: str) -> None:
    name = str(sa.engine.make_url(target).database)
    with contextlib.suppress(Exception):
        admin = mysql_connect(target, database=None)
        try:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()


def _check_mysql(dump: Path, target: str, info: dict[str, Any]) -> tuple[int, str | None]:
    try:
        _restore_mysql(dump, target)
        sums, revision = _sums_mysql(target)
        _check_revision("the restored database", revision, migrations_head())
        return _compare(info["tables"], sums), revision
    finally:
        _drop_mysql(target)


# -- the job ------------------------------------------------------------------------------


def run_restore_check(settings: Settings) -> RestoreReport:
    started = time.monotonic()
    target = scratch_url(settings)
    path, info, dump = _load_manifest(settings.backup_dir)
    backend = "sqlite" if settings.is_sqlite else "mysql"
    if info.get("backend") != backend:
        raise JobFailed(f"newest backup {path.name} is a {info.get('backend')} backup")
    _check_revision(f"backup {path.name}", info.get("schemaRevision"), migrations_head())
    if settings.is_sqlite:
        rows, revision = _check_sqlite(dump, target, info)
        shown = target or "a temporary SQLite file"
    else:
        rows, revision = _check_mysql(dump, target, info)
        shown = _shown(target)
    return RestoreReport(
        path, shown, len(info["tables"]), rows, revision, time.monotonic() - started
    )
