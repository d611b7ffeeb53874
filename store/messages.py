"""Turn storage after the start: checkpoints, the final write, the reads of resume.

A turn's start (its two rows, the locks, the sequence numbers) is :mod:`store.turn_start`;
its names are exported here too, where the turn code has always found them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from protocol.frames import FinishReason, MessageStatus
from store.db import utcnow
from store.records import MessageRecord
from store.schema import conversations, messages
from store.turn_start import (
    BeginOutcome,
    BeginRequest,
    BeginResult,
    begin_turn,
    begin_turns,
)

__all__ = [
    "BeginOutcome",
    "BeginRequest",
    "BeginResult",
    "begin_turn",
    "begin_turns",
    "checkpoint_many",
    "find_turn",
    "finish_message",
    "get_message",
    "interrupt_streaming",
    "messages_by_seq",
    "resume_view",
    "streaming_in_conversation",
    "streaming_message",
    "streaming_turns",
]

STREAMING = MessageStatus.STREAMING.value


# a message written only while it streams: a final one is never written again
_WHILE_STREAMING = messages.update().where(
    messages.c.id == sa.bindparam("mid"), messages.c.status == STREAMING
)
_CHECKPOINT = _WHILE_STREAMING.values(
    content=sa.bindparam("text"),
    chunk_count=sa.bindparam("chunks"),
    updated_at=sa.bindparam("now"),
)
_FINISH = _WHILE_STREAMING.values(
    content=sa.bindparam("text"),
    status=sa.bindparam("final_status"),
    finish_reason=sa.bindparam("reason"),
    chunk_count=sa.bindparam("chunks"),
    prompt_tokens=sa.bindparam("prompt"),
    completion_tokens=sa.bindparam("completion"),
    updated_at=sa.bindparam("now"),
)


def get_message(conn: Connection, message_id: str) -> MessageRecord | None:
    row = conn.execute(sa.select(messages).where(messages.c.id == message_id)).first()
    return MessageRecord.from_row(row) if row else None


def find_turn(
    conn: Connection, *, conversation_id: str, client_message_id: str
) -> tuple[MessageRecord, MessageRecord | None] | None:
    """The user message with this client id and the assistant message answering it."""
    row = conn.execute(
        sa.select(messages).where(
            messages.c.conversation_id == conversation_id,
            messages.c.client_message_id == client_message_id,
        )
    ).first()
    if row is None:
        return None
    user_msg = MessageRecord.from_row(row)
    arow = conn.execute(
        sa.select(messages).where(messages.c.parent_id == user_msg.id).order_by(messages.c.seq)
    ).first()
    return user_msg, (MessageRecord.from_row(arow) if arow else None)


def checkpoint_many(conn: Connection, items: list[tuple[str, str, int]]) -> None:
    """Checkpoint several streaming messages in one transaction: ``(id, text, chunks)``."""
    if not items:
        return
    now = utcnow()
    conn.execute(
        _CHECKPOINT,
        [{"mid": mid, "text": text, "chunks": chunks, "now": now} for mid, text, chunks in items],
    )


def finish_message(
    conn: Connection,
    message_id: str,
    *,
    content: str,
    status: str,
    finish_reason: str | None,
    chunk_count: int,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> bool:
    """Final text and status. False if the message was already final (never finish twice)."""
    res = conn.execute(
        _FINISH,
        {
            "mid": message_id,
            "text": content,
            "final_status": status,
            "reason": finish_reason,
            "chunks": chunk_count,
            "prompt": prompt_tokens,
            "completion": completion_tokens,
            "now": utcnow(),
        },
    )
    return res.rowcount == 1


def interrupt_streaming(conn: Connection) -> int:
    """Single instance start-up: turns left streaming by a dead process end ``interrupted``."""
    return conn.execute(
        messages.update()
        .where(messages.c.status == STREAMING)
        .values(
            status=MessageStatus.INTERRUPTED.value,
            finish_reason=FinishReason.INTERRUPTED.value,
            updated_at=utcnow(),
        )
    ).rowcount


def resume_view(
    conn: Connection, *, user_id: str, conversation_id: str, after_seq: int, limit: int
) -> tuple[int, list[tuple[int, int, str]]] | None:
    """Owner check, the conversation's last seq, and ``(seq, size, status)`` above ``after_seq``.

    Sizes are the database's ``LENGTH`` (bytes on MySQL, characters on SQLite):
    good enough to enforce the replay window.
    """
    last = conn.execute(
        sa.select(conversations.c.last_seq).where(
            conversations.c.id == conversation_id,
            conversations.c.user_id == user_id,
            conversations.c.deleted_at.is_(None),
        )
    ).first()
    if last is None:
        return None
    rows = conn.execute(
        sa.select(messages.c.seq, sa.func.length(messages.c.content), messages.c.status)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.seq > after_seq,
            messages.c.deleted_at.is_(None),
        )
        .order_by(messages.c.seq)
        .limit(limit)
    ).all()
    return int(last[0]), [(int(r[0]), int(r[1] or 0), str(r[2])) for r in rows]


def messages_by_seq(conn: Connection, conversation_id: str, seqs: list[int]) -> list[MessageRecord]:
    if not seqs:
        return []
    rows = conn.execute(
        sa.select(messages)
        .where(messages.c.conversation_id == conversation_id, messages.c.seq.in_(seqs))
        .order_by(messages.c.seq)
    )
    return [MessageRecord.from_row(r) for r in rows]


def streaming_turns(conn: Connection, *, limit: int = 1000) -> list[MessageRecord]:
    """Assistant messages still ``streaming`` (every instance's turns in flight), oldest
    first: the sweeper looks for the ones whose owner is gone."""
    rows = conn.execute(
        sa.select(messages)
        .where(messages.c.status == STREAMING, messages.c.deleted_at.is_(None))
        .order_by(messages.c.updated_at)
        .limit(limit)
    ).all()
    return [MessageRecord.from_row(r) for r in rows]


def streaming_message(
    conn: Connection, *, user_id: str, conversation_id: str, message_id: str
) -> MessageRecord | None:
    """The caller's assistant message ``message_id`` in ``conversation_id`` while it streams."""
    row = conn.execute(
        sa.select(messages).where(
            messages.c.id == message_id,
            messages.c.conversation_id == conversation_id,
            messages.c.user_id == user_id,
            messages.c.status == STREAMING,
            messages.c.deleted_at.is_(None),
        )
    ).first()
    return None if row is None else MessageRecord.from_row(row)


def streaming_in_conversation(conn: Connection, conversation_id: str) -> list[str]:
    """Ids of the conversation's assistant messages still streaming (one at most)."""
    rows = conn.execute(
        sa.select(messages.c.id).where(
            messages.c.conversation_id == conversation_id, messages.c.status == STREAMING
        )
    ).all()
    return [str(r[0]) for r in rows]
