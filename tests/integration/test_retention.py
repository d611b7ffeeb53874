"""The retention job on both backends, on a database of its own seeded with crafted
timestamps: it purges exactly what it should and nothing else, in batches of the set size,
leaves tombstones that answer REPLAY_EXPIRED, keeps a purged user's audit events under a
pseudonym, is idempotent, and a second instance holding the lock makes it skip."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.retention import run_retention
from store.audit import pseudonym
from store.db import create_db_engine, utcnow
from store.jobruns import job_lock, release_lock
from store.messages import BeginOutcome, begin_turn
from store.migrate import upgrade_to_head
from store.schema import (
    audit_events,
    conversations,
    message_tombstones,
    messages,
    refresh_history,
    sessions,
    users,
)
from store.tombstones import tombstone_key
from tests.conftest import MySQLDatabases, make_settings

NOW = utcnow()
DAY = dt.timedelta(days=1)


def ago(days: float) -> dt.datetime:
    return NOW - days * DAY


class Seed:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def user(
        self, kind: str = "registered", *, active: float = 0, deleted: float | None = None
    ) -> str:
        uid = str(uuid.uuid4())
        self.conn.execute(
            users.insert().values(
                id=uid,
                kind=kind,
                email=None if kind == "guest" or deleted is not None else f"{uid}@example.com",
                created_at=ago(400),
                last_active_at=ago(active),
                deleted_at=None if deleted is None else ago(deleted),
            )
        )
        return uid

    def conv(
        self,
        uid: str,
        *,
        deleted: float | None = None,
        n: int = 0,
        msg_deleted: float | None = None,
    ) -> tuple[str, list[str]]:
        cid = str(uuid.uuid4())
        self.conn.execute(
            conversations.insert().values(
                id=cid,
                user_id=uid,
                title="t",
                last_seq=n,
                created_at=ago(100),
                updated_at=ago(100),
                deleted_at=None if deleted is None else ago(deleted),
            )
        )
        client_ids = []
        for seq in range(1, n + 1):
            cmid = str(uuid.uuid4()) if seq % 2 else None
            if cmid:
                client_ids.append(cmid)
            self.msg(
                cid, uid, seq, cmid, deleted=msg_deleted if msg_deleted is not None else deleted
            )
        return cid, client_ids

    def msg(
        self, cid: str, uid: str, seq: int, cmid: str | None, *, deleted: float | None = None
    ) -> None:
        self.conn.execute(
            messages.insert().values(
                id=str(uuid.uuid4()),
                conversation_id=cid,
                user_id=uid,
                seq=seq,
                role="user" if cmid else "assistant",
                content=f"message {seq}",
                status="completed",
                client_message_id=cmid,
                created_at=ago(100),
                updated_at=ago(100),
                deleted_at=None if deleted is None else ago(deleted),
            )
        )

    def session(
        self,
        uid: str,
        *,
        expires: float = -30,
        revoked: float | None = None,
        history: tuple[float, ...] = (),
    ) -> str:
        sid = str(uuid.uuid4())
        self.conn.execute(
            sessions.insert().values(
                id=sid,
                user_id=uid,
                refresh_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                created_at=ago(50),
                last_used_at=ago(1),
                expires_at=ago(expires),
                revoked_at=None if revoked is None else ago(revoked),
            )
        )
        for h in history:
            self.conn.execute(
                refresh_history.insert().values(
                    token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
                    session_id=sid,
                    user_id=uid,
                    rotated_at=ago(h),
                )
            )
        return sid

    def event(self, uid: str, days: float, action: str = "login") -> None:
        self.conn.execute(
            audit_events.insert().values(
                at=ago(days),
                action=action,
                subject_id=uid,
                actor_id=uid,
                ip="10.1.2.3",
                user_agent="ua",
                target_type="user",
                target_id=uid,
            )
        )


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/retention.db"
        upgrade_to_head(url)
        return url
    dbs: MySQLDatabases = request.getfixturevalue("mysql_dbs")
    return dbs.create()


def ids(conn: sa.Connection, table: sa.Table, col: str = "id") -> set[str]:
    return {str(r[0]) for r in conn.execute(sa.select(table.c[col]))}


def test_retention_purges_exactly_in_batches(
    fresh_url: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = make_settings(
        backend, request, tmp_path, database_url=fresh_url, retention_batch_size=3
    )
    engine = create_db_engine(fresh_url, pool_size=2)
    with engine.begin() as conn:
        s = Seed(conn)
        # purged: a user deleted 31 days ago with all it owns; a guest idle 8 days
        gone_user = s.user(deleted=31)
        purged_convs = {s.conv(gone_user, n=3)[0], s.conv(gone_user, n=1)[0]}
        s.session(gone_user, history=(2,))
        s.session(gone_user)
        s.event(gone_user, 40, "register")
        s.event(gone_user, 35, "account_delete")
        idle_guest = s.user("guest", active=8)
        purged_convs.add(s.conv(idle_guest, n=2)[0])
        s.session(idle_guest)
        # kept: deleted 29 days ago, a guest idle 6 days
        recent_deleted = s.user(deleted=29)
        s.conv(recent_deleted, deleted=29, n=2)
        active_guest = s.user("guest", active=6)
        s.conv(active_guest, n=2)
        # a live user: one conversation deleted 31 days ago (7 messages), one 10 days ago,
        # one live with two messages deleted 31 days ago
        live = s.user()
        old_conv, old_ids = s.conv(live, deleted=31, n=7)
        young_conv, _ = s.conv(live, deleted=10, n=2)
        # deleted 31 days ago, its messages never marked themselves
        orphan_conv, _ = s.conv(live, deleted=31, n=0)
        s.msg(orphan_conv, live, 1, "33333333-3333-4333-8333-333333333333")
        s.msg(orphan_conv, live, 2, None)
        live_conv, _ = s.conv(live, n=0)
        s.msg(live_conv, live, 1, "11111111-1111-4111-8111-111111111111", deleted=31)
        s.msg(live_conv, live, 2, None, deleted=31)
        s.msg(live_conv, live, 3, "22222222-2222-4222-8222-222222222222")
        s.msg(live_conv, live, 4, None)
        conn.execute(
            conversations.update().where(conversations.c.id == live_conv).values(last_seq=4)
        )
        expired = s.session(live, expires=1 / 24, history=(3, 2))
        revoked = s.session(live, revoked=2)
        just_revoked = s.session(live, revoked=0.1)
        live_session = s.session(live, history=(40, 1))
        for _ in range(4):
            s.event(live, 366)
        s.event(live, 364)
        conn.execute(message_tombstones.insert().values(key_hash="a" * 64, purged_at=ago(366)))
        conn.execute(message_tombstones.insert().values(key_hash="b" * 64, purged_at=ago(300)))
    with engine.connect() as conn:
        before = {t.name: ids(conn, t) for t in (users, conversations)}

    report = run_retention(settings, now=NOW)
    assert report.counts == {
        "guests_claimed": 1,
        "messages": 4 + 2 + 7 + 2 + 2,
        "conversations": 2 + 1 + 1 + 1,
        "users": 2,
        "sessions": 2 + 1 + 2,
        "refresh_history": 1 + 2 + 1,
        "audit_events": 4,
        "tombstones": 1,
    }
    assert all(0 < n <= 3 for b in report.batches.values() for n in b), report.batches
    # the users' 4 (3+1) and 2; then 9 marked deleted (3*3); then 2 of a deleted conversation
    assert sorted(report.batches["messages"]) == [1, 2, 2, 3, 3, 3, 3]
    assert report.batches["audit_events"] == [3, 1]
    with engine.connect() as conn:
        assert ids(conn, users) == before["users"] - {gone_user, idle_guest}
        assert ids(conn, conversations) == (
            before["conversations"] - purged_convs - {old_conv, orphan_conv}
        )
        assert young_conv in ids(conn, conversations)
        left = conn.execute(
            sa.select(messages.c.conversation_id, messages.c.seq).where(messages.c.user_id == live)
        ).all()
        assert sorted((r[0] == live_conv, r[1]) for r in left) == sorted(
            [(False, 1), (False, 2), (True, 3), (True, 4)]
        )
        assert ids(conn, sessions) >= {just_revoked, live_session}
        assert not ids(conn, sessions) & {expired, revoked}
        hist = conn.execute(sa.select(refresh_history.c.rotated_at)).all()
        assert len(hist) == 1 and hist[0][0] > ago(2)
        # audit: the old events gone, the purged user's kept under a pseudonym, no ip
        ev = conn.execute(sa.select(audit_events).order_by(audit_events.c.id)).all()
        assert [e.subject_id for e in ev if e.subject_id != live] == [pseudonym(gone_user)] * 2
        assert all(e.ip is None and e.user_agent is None for e in ev if e.subject_id != live)
        assert len([e for e in ev if e.subject_id == live]) == 1
        # tombstones: the old one gone, one per purged client messageId written
        tombs = ids(conn, message_tombstones, "key_hash")
        assert "a" * 64 not in tombs and "b" * 64 in tombs
        assert {tombstone_key(old_conv, m) for m in old_ids} <= tombs
        assert tombstone_key(live_conv, "11111111-1111-4111-8111-111111111111") in tombs
        assert len(tombs) == 1 + 3 + 1 + 4 + 1 + 1  # kept "b", then per purged client id
        details = conn.execute(
            sa.select(sa.text("last_result")).select_from(sa.text("job_runs"))
        ).scalar_one()
        assert json.loads(details)["users"] == 2

    # a late chat.send of a purged messageId: REPLAY_EXPIRED, nothing generated
    with engine.begin() as conn:
        res = begin_turn(
            conn,
            user_id=live,
            conversation_id=live_conv,
            client_message_id="11111111-1111-4111-8111-111111111111",
            content="again",
        )
        assert res.outcome is BeginOutcome.EXPIRED
        fresh = begin_turn(
            conn,
            user_id=live,
            conversation_id=live_conv,
            client_message_id=str(uuid.uuid4()),
            content="new",
        )
        assert fresh.outcome is BeginOutcome.STARTED

    # idempotent: a second run finds nothing
    again = run_retention(settings, now=NOW)
    assert set(again.counts.values()) == {0}
    # another instance holds the lock: this one skips, touching nothing
    assert job_lock(engine, "retention", "other-instance", NOW)
    skipped = run_retention(settings, now=NOW)
    assert skipped.skipped and "skipped" in skipped.line()
    release_lock(engine, "retention", "other-instance", None)
    engine.dispose()


def test_the_lease_is_renewed_and_a_lost_lease_stops_the_run(
    fresh_url: str,
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jobs.retention as job

    settings = make_settings(
        backend, request, tmp_path, database_url=fresh_url, retention_batch_size=2
    )
    engine = create_db_engine(fresh_url, pool_size=2)
    with engine.begin() as conn:
        uid = Seed(conn).user()
        for _ in range(5):
            Seed(conn).event(uid, 400)
    monkeypatch.setattr(job, "RENEW_EVERY", 1)
    report = run_retention(settings, now=NOW)
    assert report.counts["audit_events"] == 5 and report.batches["audit_events"] == [2, 2, 1]
    assert report.statements >= 3
    with engine.begin() as conn:
        for _ in range(5):
            Seed(conn).event(uid, 400)
    real = job.job_lock
    calls: list[str] = []

    def lose_on_renewal(eng: object, name: str, owner: str, now: dt.datetime) -> bool:
        calls.append(owner)
        return real(eng, name, owner, now) if len(calls) == 1 else False  # type: ignore[arg-type]

    monkeypatch.setattr(job, "job_lock", lose_on_renewal)
    with pytest.raises(RuntimeError, match="lease was lost"):
        run_retention(settings, now=NOW)
    with engine.connect() as conn:  # it stopped at the first renewal, and let the lease go
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar_one() == 5
        assert conn.execute(sa.text("SELECT lock_owner FROM job_runs")).scalar_one() is None
    engine.dispose()
