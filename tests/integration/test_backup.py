"""Backups and restore checks (jobs/backup.py, jobs/restore_check.py) on SQLite and on
the real MariaDB: back up, restore into a scratch database, compare with the manifest;
a corrupted or tampered dump must fail the check with one line naming the failure."""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.backup import list_backups, run_backup
from jobs.dumpfmt import JobFailed, migrations_head, same_mysql_database
from jobs.restore_check import _restore_mysql, run_restore_check, scratch_url
from jobs.run import run_job
from server.settings import Settings
from store.db import create_db_engine
from store.migrate import upgrade_to_head
from store.schema import audit_events, conversations, messages, metadata, users
from tests.conftest import MYSQL_HOST, MYSQL_PORT, TEST_JWT_KEYS, MySQLDatabases, _mysql_admin

TRICKY = [
    "plain",
    'it\'s "quoted" and back\\slashed',
    "two\nlines\r\nand a tab\t",
    "emoji 🦜 and ünïcödé",
    "semicolon at the end;",
    "-- parley dump complete",
    "",
]


def _now() -> dt.datetime:
    return dt.datetime(2026, 1, 2, 3, 4, 5, 123456)


def fill(url: str, *, conversations_n: int = 3, per_conversation: int = 10) -> None:
    """Users, conversations, messages (awkward text included), an audit event."""
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            uid = str(uuid.uuid4())
            t = _now()
            conn.execute(
                sa.insert(users).values(
                    id=uid, kind="guest", created_at=t, last_active_at=t, display_name="Zoë"
                )
            )
            for c in range(conversations_n):
                cid = str(uuid.uuid4())
                conn.execute(
                    sa.insert(conversations).values(
                        id=cid,
                        user_id=uid,
                        title=f"conv {c}",
                        last_seq=per_conversation,
                        created_at=t,
                        updated_at=t,
                    )
                )
                conn.execute(
                    sa.insert(messages),
                    [
                        {
                            "id": str(uuid.uuid4()),
                            "conversation_id": cid,
                            "user_id": uid,
                            "seq": i + 1,
                            "role": "user" if i % 2 == 0 else "assistant",
                            "content": TRICKY[i % len(TRICKY)] + f" #{i}",
                            "status": "completed",
                            "created_at": t + dt.timedelta(microseconds=i),
                            "updated_at": t,
                        }
                        for i in range(per_conversation)
                    ],
                )
            conn.execute(
                sa.insert(audit_events).values(at=t, action="register", subject_id=uid, ip="::1")
            )
    finally:
        engine.dispose()


def count(url: str, table: sa.Table) -> int:
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/live.db"
        upgrade_to_head(url)
        return url
    dbs: MySQLDatabases = request.getfixturevalue("mysql_dbs")
    return dbs.create()


def settings_for(url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": url,
        "jwt_keys": TEST_JWT_KEYS,
        "data_dir": tmp_path,
        "backup_dir": tmp_path / "backups",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def mysql_database_exists(name: str) -> bool:
    conn = _mysql_admin()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def newest(settings: Settings) -> tuple[Path, dict[str, object], Path]:
    manifest = list_backups(settings.backup_dir)[-1]
    info = json.loads(manifest.read_text())
    return manifest, info, settings.backup_dir / str(info["dump"])


def rewrite_dump(manifest: Path, dump: Path, data: bytes) -> None:
    """Replace the dump and make the manifest's file checksum agree (a careful forger)."""
    packed = gzip.compress(data)
    dump.write_bytes(packed)
    info = json.loads(manifest.read_text())
    info["dumpBytes"] = len(packed)
    info["dumpSha256"] = hashlib.sha256(packed).hexdigest()
    manifest.write_text(json.dumps(info))


def check_fails(settings: Settings, capsys: pytest.CaptureFixture[str], needle: str) -> str:
    assert run_job("restore-check", settings) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert err.startswith("parley: restore-check failed: ") and needle in err, err
    return err


# -- the round trip ------------------------------------------------------------------------


def test_backup_and_restore_check_round_trip(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    assert run_job("backup", settings) == 0
    out = capsys.readouterr().out
    assert out.startswith("backup ok: ") and out.count("\n") == 1
    manifest, info, dump = newest(settings)
    assert dump.exists() and dump.name.endswith(".sql.gz" if "mysql" in db_url else ".sqlite.gz")
    assert info["schemaRevision"] == migrations_head()
    tables = info["tables"]
    assert isinstance(tables, dict)
    assert set(tables) == set(metadata.tables) | {"alembic_version"}
    assert {"users", "sessions", "conversations", "messages", "audit_events"} <= set(tables)
    assert tables["messages"]["rows"] == count(db_url, messages) == 30
    assert tables["users"]["rows"] == 1 and tables["audit_events"]["rows"] == 1
    assert info["dumpSha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert not list(settings.backup_dir.glob(".*.tmp"))

    assert run_job("restore-check", settings) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restore-check ok: {manifest.name}") and "30" not in out.split(":")[0]
    assert "counts and checksums match" in out
    if "mysql" in db_url:
        live = sa.engine.make_url(db_url).database
        assert not mysql_database_exists(f"{live}_restore_check")  # dropped again


def test_dump_restores_the_exact_rows(db_url: str, tmp_path: Path) -> None:
    """What a real restore gets back: every message byte for byte."""
    fill(db_url, conversations_n=1, per_conversation=len(TRICKY))
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    _m, _info, dump = newest(settings)
    if "mysql" in db_url:
        target = scratch_url(settings)
        _restore_mysql(dump, target)
        restored_url = target
    else:
        restored = tmp_path / "restored.db"
        restored.write_bytes(gzip.decompress(dump.read_bytes()))
        restored_url = f"sqlite:///{restored}"
    try:
        q = sa.select(messages.c.seq, messages.c.content, messages.c.created_at).order_by(
            messages.c.seq
        )
        engines = [create_db_engine(u, pool_size=1) for u in (db_url, restored_url)]
        rows = []
        for e in engines:
            with e.connect() as conn:
                rows.append(conn.execute(q).all())
            e.dispose()
        assert rows[0] == rows[1]
        assert [r.content.rsplit(" #", 1)[0] for r in rows[1]] == TRICKY
    finally:
        if "mysql" in db_url:
            name = sa.engine.make_url(restored_url).database
            conn = _mysql_admin()
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()


def test_backup_is_one_snapshot_while_chat_writes(db_url: str, tmp_path: Path) -> None:
    """Rows written during the backup are either wholly in it or not at all: the manifest
    (counted in the same snapshot) matches the restored dump although the live database
    moved on while it was written."""
    fill(db_url, conversations_n=20, per_conversation=100)
    settings = settings_for(db_url, tmp_path)
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        engine = create_db_engine(db_url, pool_size=1)
        try:
            while not stop.is_set():
                t = _now()
                uid = str(uuid.uuid4())
                with engine.begin() as conn:
                    conn.execute(
                        sa.insert(users).values(
                            id=uid, kind="guest", created_at=t, last_active_at=t
                        )
                    )
                    conn.execute(
                        sa.insert(audit_events).values(at=t, action="register", subject_id=uid)
                    )
                written[0] += 1
        finally:
            engine.dispose()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 5:
            threading.Event().wait(0.01)
        result = run_backup(settings)
        after = written[0] + 1
        while written[0] < after and thread.is_alive():  # one more write after the backup
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(30)
    tables = result.info["tables"]
    # each writer transaction adds one user and one audit event: a snapshot sees both or neither
    assert tables["users"]["rows"] == tables["audit_events"]["rows"]
    assert tables["users"]["rows"] < count(db_url, users)  # the live database moved on
    report = run_restore_check(settings)
    assert report.rows == sum(t["rows"] for t in tables.values())


# -- failures -----------------------------------------------------------------------------


def test_flipped_byte_fails_the_check(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    _m, _i, dump = newest(settings)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    check_fails(settings, capsys, "does not match its manifest")


def test_unreadable_dump_fails_even_with_a_matching_file_checksum(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    manifest, _i, dump = newest(settings)
    packed = dump.read_bytes()[:-40]  # truncated gzip stream
    dump.write_bytes(packed)
    info = json.loads(manifest.read_text())
    info.update(dumpBytes=len(packed), dumpSha256=hashlib.sha256(packed).hexdigest())
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "")


def test_tampered_row_fails_on_its_table_checksum(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    manifest, _i, dump = newest(settings)
    raw = gzip.decompress(dump.read_bytes())
    if "mysql" in db_url:
        assert raw.count(b"emoji \xf0\x9f\xa6\x9c") >= 1
        data = raw.replace(b"emoji \xf0\x9f\xa6\x9c", b"emoji !!!!", 1)
    else:
        plain = tmp_path / "t.db"
        plain.write_bytes(raw)
        conn = sqlite3.connect(plain)
        conn.execute("UPDATE messages SET content = 'changed' WHERE seq = 4")
        conn.commit()
        conn.close()
        data = plain.read_bytes()
    rewrite_dump(manifest, dump, data)
    check_fails(settings, capsys, "table messages: checksum differs")


def test_missing_row_fails_on_its_count(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    manifest, _i, _dump = newest(settings)
    info = json.loads(manifest.read_text())
    info["tables"]["messages"]["rows"] += 1
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "table messages: 30 rows restored, manifest says 31")


@pytest.mark.mysql
def test_cut_short_mysql_dump_fails(
    mysql_dbs: MySQLDatabases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mysql_dbs.create()
    fill(url)
    settings = settings_for(url, tmp_path)
    run_backup(settings)
    manifest, _i, dump = newest(settings)
    lines = gzip.decompress(dump.read_bytes()).splitlines(keepends=True)
    rewrite_dump(manifest, dump, b"".join(lines[:-3]))
    check_fails(settings, capsys, "cut short")
    assert not mysql_database_exists(sa.engine.make_url(url).database + "_restore_check")


@pytest.mark.mysql
def test_views_and_triggers_are_refused_not_dropped_silently(
    mysql_dbs: MySQLDatabases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dump carries tables only: a database with a view or trigger fails the backup."""
    url = mysql_dbs.create()
    conn = _mysql_admin()
    with conn.cursor() as cur:
        cur.execute(f"CREATE VIEW `{sa.engine.make_url(url).database}`.v AS SELECT 1 AS one")
    conn.close()
    settings = settings_for(url, tmp_path)
    assert run_job("backup", settings) == 1
    err = capsys.readouterr().err.strip()
    assert "holds 1 view(s), which this backup does not carry" in err and "\n" not in err
    assert list_backups(settings.backup_dir) == []
    assert not list(settings.backup_dir.glob(".*.tmp"))


@pytest.mark.mysql
def test_broken_statement_fails_and_drops_the_scratch(
    mysql_dbs: MySQLDatabases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mysql_dbs.create()
    fill(url)
    settings = settings_for(url, tmp_path)
    run_backup(settings)
    manifest, _i, dump = newest(settings)
    raw = gzip.decompress(dump.read_bytes()).replace(b"INSERT INTO `users`", b"INSERT INTO `nope`")
    rewrite_dump(manifest, dump, raw)
    check_fails(settings, capsys, "failed to load")
    assert not mysql_database_exists(sa.engine.make_url(url).database + "_restore_check")


def test_extra_or_missing_table_fails(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_url)
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    manifest, _i, _d = newest(settings)
    info = json.loads(manifest.read_text())
    info["tables"]["ghosts"] = {"rows": 0, "sha256": "0"}
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "lacks table(s) ghosts")
    del info["tables"]["ghosts"], info["tables"]["sessions"]
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "not in the manifest: sessions")


def test_schema_not_at_head_fails(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(db_url, tmp_path)
    run_backup(settings)
    manifest, _i, _d = newest(settings)
    info = json.loads(manifest.read_text())
    info["schemaRevision"] = "0000"
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "migrations' head is")


def test_no_backup_and_bad_manifest_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(url, tmp_path)
    check_fails(settings, capsys, "no backup in")
    settings.backup_dir.mkdir()
    (settings.backup_dir / "parley-20990101T000000.000Z.json").write_text("{not json")
    check_fails(settings, capsys, "is unreadable")
    (settings.backup_dir / "parley-20990101T000000.000Z.json").write_text(
        json.dumps({"format": "parley-backup/1", "dump": "gone.sql.gz", "tables": {}})
    )
    check_fails(settings, capsys, "gone.sql.gz named by")


def test_sqlite_garbage_database_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(url, tmp_path)
    run_backup(settings)
    manifest, _i, dump = newest(settings)
    raw = bytearray(gzip.decompress(dump.read_bytes()))
    raw[100:4096] = b"\x00" * (4096 - 100)  # the schema page wiped
    rewrite_dump(manifest, dump, bytes(raw))
    check_fails(settings, capsys, "")


def test_wrong_backend_backup_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(url, tmp_path)
    run_backup(settings)
    manifest, _i, _d = newest(settings)
    info = json.loads(manifest.read_text())
    info["backend"] = "mysql"
    manifest.write_text(json.dumps(info))
    check_fails(settings, capsys, "is a mysql backup")


# -- the live database is never the scratch one ---------------------------------------------


def test_refuses_the_live_database_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(
        url, tmp_path, restore_check_database_url=f"sqlite:///{tmp_path}/./live.db"
    )
    run_backup(settings)
    check_fails(settings, capsys, "is the live database: refused")
    bad = settings_for(url, tmp_path, restore_check_database_url="mysql+pymysql://x@h/db")
    check_fails(bad, capsys, "must be an SQLite URL")


def test_sqlite_explicit_scratch_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    fill(url)
    scratch = tmp_path / "scratch" / "check.db"
    settings = settings_for(url, tmp_path, restore_check_database_url=f"sqlite:///{scratch}")
    run_backup(settings)
    assert run_job("restore-check", settings) == 0
    assert str(scratch) in capsys.readouterr().out
    assert not scratch.exists()  # dropped


def test_mysql_scratch_url_rules() -> None:
    live = f"mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/parley"
    s = Settings(env="test", database_url=live)  # type: ignore[call-arg]
    assert scratch_url(s) == f"mysql+pymysql://root@{MYSQL_HOST}:{MYSQL_PORT}/parley_restore_check"
    for same in (live, f"mysql+pymysql://other:pw@localhost:{MYSQL_PORT}/parley"):
        with pytest.raises(JobFailed, match="live database: refused"):
            scratch_url(s.model_copy(update={"restore_check_database_url": same}))
    elsewhere = "mysql+pymysql://root@db-restore.example:3306/parley"
    assert not same_mysql_database(elsewhere + "x", live)
    assert scratch_url(s.model_copy(update={"restore_check_database_url": elsewhere})) == elsewhere
    with pytest.raises(JobFailed, match="must be a mysql"):
        scratch_url(s.model_copy(update={"restore_check_database_url": "sqlite:///x.db"}))
    with pytest.raises(JobFailed, match="names no database"):
        scratch_url(s.model_copy(update={"restore_check_database_url": "mysql+pymysql://r@h/"}))


@pytest.mark.mysql
def test_refuses_the_live_database_mysql(
    mysql_dbs: MySQLDatabases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = mysql_dbs.create()
    fill(url)
    settings = settings_for(url, tmp_path, restore_check_database_url=url)
    run_backup(settings)
    check_fails(settings, capsys, "is the live database: refused")
    assert count(url, messages) == 30  # untouched


def test_restore_check_url_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "scratch-url"
    secret.write_text("mysql+pymysql://u:secret@db:3306/scratch\n")
    monkeypatch.setenv("PARLEY_RESTORE_CHECK_DATABASE_URL_FILE", str(secret))
    monkeypatch.delenv("PARLEY_RESTORE_CHECK_DATABASE_URL", raising=False)
    assert Settings().restore_check_database_url == "mysql+pymysql://u:secret@db:3306/scratch"  # type: ignore[call-arg]


# -- files: retention, atomicity, one at a time ----------------------------------------------


def test_keeps_the_newest_and_cleans_leftovers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(url, tmp_path, backup_keep=2)
    settings.backup_dir.mkdir()
    leftover = settings.backup_dir / ".parley-20000101T000000.000Z.sql.gz.tmp"
    leftover.write_bytes(b"half")
    orphan = settings.backup_dir / "parley-20000101T000000.000Z.sqlite.gz"
    orphan.write_bytes(b"no manifest")
    base = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    results = [run_backup(settings, now=base + dt.timedelta(hours=h)) for h in range(4)]
    manifests = list_backups(settings.backup_dir)
    assert manifests == [r.manifest for r in results[-2:]]
    dumps = sorted(p.name for p in settings.backup_dir.glob("parley-*.gz"))
    assert dumps == sorted(r.dump.name for r in results[-2:])
    assert not leftover.exists() and not orphan.exists()
    assert results[-1].removed == [results[1].manifest.name, results[1].dump.name]


def test_one_backup_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    settings = settings_for(url, tmp_path)
    settings.backup_dir.mkdir()
    with open(settings.backup_dir / ".backup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(JobFailed, match="another backup is running"):
            run_backup(settings)
    assert run_backup(settings).manifest.exists()


def test_backup_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = settings_for(f"sqlite:///{tmp_path}/none/live.db", tmp_path)
    assert run_job("backup", missing) == 1
    assert "no SQLite database at" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    blocked = settings_for(f"sqlite:///{tmp_path}/live.db", tmp_path, backup_dir=tmp_path / "file")
    assert run_job("backup", blocked) == 1
    assert "cannot create PARLEY_BACKUP_DIR" in capsys.readouterr().err
    down = settings_for("mysql+pymysql://root@127.0.0.1:1/nothing", tmp_path)
    assert run_job("backup", down) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("parley: backup failed: OperationalError") and "\n" not in err
    assert run_job("nope", down) == 1


# -- the command --------------------------------------------------------------------------


def test_cli_backup_and_restore_check(tmp_path: Path) -> None:
    import os

    url = f"sqlite:///{tmp_path}/live.db"
    upgrade_to_head(url)
    fill(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATABASE_URL=url,
        PARLEY_DATA_DIR=str(tmp_path),
        PARLEY_JWT_KEYS=TEST_JWT_KEYS,
        PARLEY_BACKUP_DIR=str(tmp_path / "bk"),
        PARLEY_BACKUP_KEEP="1",
    )

    def parley(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = parley("jobs", "run", "backup")
    assert r.returncode == 0 and r.stdout.startswith("backup ok: "), r.stderr
    r = parley("jobs", "run", "restore-check")
    assert r.returncode == 0 and "counts and checksums match" in r.stdout, r.stderr
    dump = next((tmp_path / "bk").glob("*.gz"))
    dump.write_bytes(b"garbage")
    r = parley("jobs", "run", "restore-check")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "does not match its manifest" in r.stderr
