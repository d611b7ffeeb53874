"""Users repository: registered and guest users are rows of one table."""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.records import UserKind, UserRecord, UserRole
from store.schema import users

__all__ = [
    "EmailTaken",
    "canonical_email",
    "create_user",
    "get_user",
    "get_user_by_email",
    "set_role",
    "soft_delete_user",
    "touch_user",
    "upgrade_guest",
]


class EmailTaken(Exception):
    """The email already belongs to another user."""


def canonical_email(email: str) -> str:
    """The one form of an email for storage, lookup and limit keys: NFKC, case-folded,
    trimmed. Lookups compare it byte for byte (:func:`_email_is`), never through the
    column's accent- and case-insensitive MariaDB collation."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email).casefold()).strip()


def _email_is(conn: Connection, email: str) -> sa.ColumnElement[bool]:
    """``email = x`` exactly. On MySQL/MariaDB the column's collation (utf8mb4_unicode_ci)
    would also match accent and case variants (``cárol`` = ``carol``): the indexed,
    insensitive comparison finds the candidates and a binary one keeps the exact row.
    Uniqueness stays the column's (stricter: a variant of a taken email is taken too)."""
    email = canonical_email(email)
    if conn.dialect.name in ("mysql", "mariadb"):
        return sa.and_(users.c.email == email, users.c.email.collate("utf8mb4_bin") == email)
    return users.c.email == email


def new_user_record(
    *,
    kind: str,
    email: str | None = None,
    password_hash: str | None = None,
    display_name: str | None = None,
    role: str = UserRole.USER.value,
) -> UserRecord:
    """A new user, not stored yet (:func:`create_user` stores one)."""
    now = utcnow()
    return UserRecord(
        id=str(uuid.uuid4()),
        kind=kind,
        role=role,
        email=None if email is None else canonical_email(email),
        password_hash=password_hash,
        display_name=display_name,
        created_at=now,
        last_active_at=now,
        deleted_at=None,
    )


def create_user(
    conn: Connection,
    *,
    kind: str,
    email: str | None = None,
    password_hash: str | None = None,
    display_name: str | None = None,
    role: str = UserRole.USER.value,
) -> UserRecord:
    user = new_user_record(
        kind=kind,
        email=email,
        password_hash=password_hash,
        display_name=display_name,
        role=role,
    )
    try:
        conn.execute(users.insert(), user.as_row())
    except sa.exc.IntegrityError as exc:
        raise EmailTaken(email) from exc
    return user  # what was stored (no read-back: every column is given)


def get_user(conn: Connection, user_id: str, *, include_deleted: bool = False) -> UserRecord | None:
    q = sa.select(users).where(users.c.id == user_id)
    if not include_deleted:
        q = q.where(users.c.deleted_at.is_(None))
    row = conn.execute(q).first()
    return UserRecord.from_row(row) if row else None


def get_user_by_email(conn: Connection, email: str) -> UserRecord | None:
    row = conn.execute(
        sa.select(users).where(_email_is(conn, email), users.c.deleted_at.is_(None))
    ).first()
    return UserRecord.from_row(row) if row else None


def upgrade_guest(
    conn: Connection, user_id: str, *, email: str, password_hash: str, display_name: str | None
) -> UserRecord | None:
    """Guest -> registered in place (same id). None if the user is not a live guest."""
    try:
        res = conn.execute(
            users.update()
            .where(
                users.c.id == user_id,
                users.c.kind == UserKind.GUEST.value,
                users.c.deleted_at.is_(None),
            )
            .values(
                kind=UserKind.REGISTERED.value,
                email=canonical_email(email),
                password_hash=password_hash,
                display_name=display_name,
                last_active_at=utcnow(),
            )
        )
    except sa.exc.IntegrityError as exc:
        raise EmailTaken(email) from exc
    if res.rowcount != 1:
        return None
    return get_user(conn, user_id)


def touch_user(conn: Connection, user_id: str, *, now: dt.datetime | None = None) -> None:
    conn.execute(users.update().where(users.c.id == user_id).values(last_active_at=now or utcnow()))


def set_role(conn: Connection, email: str, role: str) -> bool:
    res = conn.execute(
        users.update().where(_email_is(conn, email), users.c.deleted_at.is_(None)).values(role=role)
    )
    return res.rowcount == 1


def soft_delete_user(conn: Connection, user_id: str) -> None:
    """Mark deleted and free the email at once; the retention job purges the rows later."""
    conn.execute(
        users.update()
        .where(users.c.id == user_id, users.c.deleted_at.is_(None))
        .values(deleted_at=utcnow(), email=None, password_hash=None)
    )
