"""``parley jobs run retention``: purge what may no longer be kept (docs/SPEC.md section 6).

- users soft-deleted more than ``PARLEY_RETENTION_DELETED_DAYS`` (30) ago, and guests idle
  ``PARLEY_GUEST_INACTIVITY_DAYS`` (7), with everything they own; their audit events stay,
  pseudonymised;
- conversations and messages soft-deleted more than 30 days ago (a tombstone per purged
  client ``messageId``: a late replay answers ``REPLAY_EXPIRED``);
- sessions expired (or revoked a day ago) with their refresh history; rotated refresh
  hashes older than the refresh lifetime;
- audit events older than ``PARLEY_RETENTION_AUDIT_DAYS`` (365); tombstones older than
  ``PARLEY_RETENTION_TOMBSTONE_DAYS`` (365).

Every statement deletes at most ``PARLEY_RETENTION_BATCH_SIZE`` (1,000) rows, one short
transaction each. A lease in ``job_runs`` keeps a second instance out (it reports
"skipped"); a run is idempotent (a second one finds nothing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from server.settings import Settings
from store import retention as r
from store.db import create_db_engine, utcnow
from store.jobruns import job_lock, release_lock

__all__ = ["KINDS", "RetentionReport", "job_lock", "release_lock", "run_retention"]

RENEW_EVERY = 50  # statements between renewals of the 10-minute lease

KINDS = (
    "guests_claimed",
    "messages",
    "conversations",
    "users",
    "sessions",
    "refresh_history",
    "audit_events",
    "tombstones",
)


@dataclass
class RetentionReport:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    batches: dict[str, list[int]] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0
    owner: str = ""  # this run's lease holder id
    statements: int = 0

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] += n
        if n:
            self.batches.setdefault(kind, []).append(n)

    def line(self) -> str:
        if self.skipped:
            return "retention: skipped, another instance holds the lock"
        parts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"retention: purged {parts} in {self.seconds:.1f}s"


def _drain(
    engine: Engine,
    report: RetentionReport,
    kind: str,
    step: Callable[[Connection], int],
    batch: int,
) -> None:
    """Run ``step`` (one batch, one transaction) until a batch comes back short."""
    while True:
        with engine.begin() as conn:
            n = step(conn)
        report.add(kind, n)
        report.statements += 1
        if report.statements % RENEW_EVERY == 0 and not job_lock(
            engine, "retention", report.owner, utcnow()
        ):
            raise RuntimeError("the retention lease was lost to another instance")
        if n < batch:
            return


def run_retention(
    settings: Settings, *, now: dt.datetime | None = None, engine: Engine | None = None
) -> RetentionReport:
    """One run. ``now`` (naive UTC) is for tests with crafted timestamps."""
    started = time.monotonic()
    own = engine is None
    eng = engine or create_db_engine(settings.database_url, pool_size=1)
    owner = secrets.token_hex(8)
    report = RetentionReport(owner=owner)
    try:
        now = now or utcnow()
        if not job_lock(eng, "retention", owner, now):
            report.skipped = True
            return report
        _purge(eng, settings, now, report)
        report.seconds = time.monotonic() - started
        release_lock(eng, "retention", owner, report.counts)
        return report
    except BaseException:
        with contextlib.suppress(Exception):  # the database may be what failed
            release_lock(eng, "retention", owner, None)
        raise
    finally:
        if own:
            eng.dispose()


def _purge(eng: Engine, s: Settings, now: dt.datetime, report: RetentionReport) -> None:
    b = s.retention_batch_size
    days = dt.timedelta(days=1)
    deleted_before = now - s.retention_deleted_days * days
    guest_idle = now - s.guest_inactivity_days * days
    _drain(
        eng,
        report,
        "guests_claimed",
        lambda c: r.claim_idle_guests(c, guest_idle, now, b),
        b,
    )
    done: set[str] = set()
    while ids := [u for u in _users(eng, deleted_before, guest_idle, b) if u not in done]:
        for uid in ids:
            done.add(uid)
            for kind in ("messages", "conversations", "refresh_history", "sessions"):
                step = functools.partial(r.purge_user_rows, user_id=uid, kind=kind, batch=b)
                _drain(eng, report, kind, step, b)
            with eng.begin() as conn:
                report.add("users", r.purge_user_rows(conn, uid, "user", b))
    for gone in r.deleted_messages(deleted_before):
        _drain(
            eng, report, "messages", functools.partial(r.delete_messages, where=gone, batch=b), b
        )
    _drain(eng, report, "conversations", lambda c: r.purge_conversations(c, deleted_before, b), b)
    revoked_before = now - s.retention_revoked_session_days * days
    while True:
        with eng.begin() as conn:
            n, hist = r.purge_expired_sessions(conn, now, revoked_before, b)
        report.add("sessions", n)
        report.add("refresh_history", hist)
        if n < b:
            break
    rotated_before = now - dt.timedelta(seconds=s.refresh_token_ttl_seconds)
    _drain(
        eng,
        report,
        "refresh_history",
        lambda c: r.purge_old_refresh_history(c, rotated_before, b),
        b,
    )
    audit_before = now - s.retention_audit_days * days
    _drain(eng, report, "audit_events", lambda c: r.purge_audit(c, audit_before, b), b)
    tomb_before = now - s.retention_tombstone_days * days
    _drain(eng, report, "tombstones", lambda c: r.purge_tombstones(c, tomb_before, b), b)


def _users(eng: Engine, deleted_before: dt.datetime, guest_idle: dt.datetime, b: int) -> list[str]:
    with eng.connect() as conn:
        return r.users_to_purge(conn, deleted_before=deleted_before, guest_idle=guest_idle, batch=b)
