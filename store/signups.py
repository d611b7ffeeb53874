"""Guest sign-ups stored together: a batch of new guests, their first sessions and their
``register`` and ``login`` audit events in one transaction (the group commit of
``POST /auth/guest``, server/api/auth.py).

Each :class:`GuestSignup` is made whole in its request, so every row carries that
request's address, user agent and trace id; :func:`create_guests` only inserts them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from store.audit import event_row, record_events
from store.records import SessionRecord, UserKind, UserRecord
from store.schema import sessions, users
from store.sessions import new_session_record
from store.users import new_user_record

__all__ = ["GuestSignup", "create_guests", "guest_signup"]


@dataclass(frozen=True, slots=True)
class GuestSignup:
    user: UserRecord
    session: SessionRecord
    events: tuple[dict[str, Any], ...]


def guest_signup(
    *,
    display_name: str | None,
    refresh_hash: str,
    ttl: dt.timedelta,
    user_agent: str | None,
    ip: str | None,
    trace_id: str | None,
) -> GuestSignup:
    """A new guest with its first session and the two events that record them, not stored
    yet (the same rows a one-by-one sign-up stores)."""
    kind = UserKind.GUEST.value
    user = new_user_record(kind=kind, display_name=display_name)
    sess = new_session_record(
        user_id=user.id, refresh_hash=refresh_hash, ttl=ttl, user_agent=user_agent, ip=ip
    )
    who: dict[str, Any] = {
        "subject_id": user.id,
        "actor_id": user.id,
        "ip": ip,
        "trace_id": trace_id,
        "user_agent": user_agent,
    }
    return GuestSignup(
        user,
        sess,
        (
            event_row(action="register", details={"kind": kind}, **who),
            event_row(action="login", details={"sessionId": sess.id, "kind": kind}, **who),
        ),
    )


def create_guests(conn: Connection, batch: list[GuestSignup]) -> list[GuestSignup]:
    """Store a batch of sign-ups: one insert statement per table, events in order."""
    conn.execute(users.insert(), [g.user.as_row() for g in batch])
    conn.execute(sessions.insert(), [g.session.as_row() for g in batch])
    record_events(conn, [e for g in batch for e in g.events])
    return batch
