"""What a user's data export reads, a page at a time (keyset order), so an export of any
size holds one page in memory."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.records import ConversationRecord, SessionRecord
from store.schema import conversations, sessions

__all__ = ["conversations_page", "sessions_of"]


def sessions_of(conn: Connection, user_id: str) -> list[SessionRecord]:
    """Every session of the user, revoked and expired ones included (a few hundred at most:
    the retention job purges expired ones)."""
    rows = conn.execute(
        sa.select(sessions).where(sessions.c.user_id == user_id).order_by(sessions.c.created_at)
    )
    return [SessionRecord.from_row(r) for r in rows]


def conversations_page(
    conn: Connection, user_id: str, *, after_id: str = "", limit: int = 200
) -> list[ConversationRecord]:
    """The user's conversations not deleted, in id order, after ``after_id``."""
    rows = conn.execute(
        sa.select(conversations)
        .where(
            conversations.c.user_id == user_id,
            conversations.c.deleted_at.is_(None),
            conversations.c.id > after_id,
        )
        .order_by(conversations.c.id)
        .limit(limit)
    )
    return [ConversationRecord.from_row(r) for r in rows]
