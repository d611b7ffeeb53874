"""Turn storage: the user message and its assistant message, checkpoints, the final write.

One turn = two rows written in one transaction: the user's message (``seq``
n+1, keyed by the client's ``messageId``) and the assistant's (``seq`` n+2,
status ``streaming``). The conversation row is locked while the sequence
numbers are taken, so ``seq`` never repeats and never skips.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.records import MessageRecord
from store.schema import conversations, messages, users

__all__ = [
    "BeginOutcome",
    "BeginResult",
    "begin_turn",
    "checkpoint_many",
    "find_turn",
    "finish_message",
    "get_message",
    "interrupt_streaming",
    "messages_by_seq",
    "resume_view",
]

STREAMING = "streaming"
CONTEXT_MESSAGES = 50


class BeginOutcome(enum.Enum):
    STARTED = "started"
    DUPLICATE = "duplicate"  # same messageId and content: replay or join
    CONFLICT = "conflict"  # same messageId, other content
    NOT_FOUND = "not_found"
    BUSY = "busy"  # a turn of this conversation is streaming
    EXPIRED = "expired"  # the cache knew the messageId, the database no longer has it
    TOO_MANY = "too_many"  # the user has the maximum of turns streaming


@dataclass(frozen=True, slots=True)
class BeginResult:
    outcome: BeginOutcome
    user_message: MessageRecord | None = None
    assistant_message: MessageRecord | None = None
    history: list[tuple[str, str]] = field(default_factory=list)


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


def _history(conn: Connection, conversation_id: str, below_seq: int) -> list[tuple[str, str]]:
    rows = conn.execute(
        sa.select(messages.c.role, messages.c.content, messages.c.status)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.seq < below_seq,
            messages.c.deleted_at.is_(None),
        )
        .order_by(messages.c.seq.desc())
        .limit(CONTEXT_MESSAGES)
    ).all()
    out = [(r.role, r.content) for r in reversed(rows) if r.content or r.role == "user"]
    return [(role, content) for role, content in out if content]


def begin_turn(
    conn: Connection,
    *,
    user_id: str,
    conversation_id: str,
    client_message_id: str,
    content: str,
    max_user_turns: int = 3,
    must_exist: bool = False,
) -> BeginResult:
    """Store a user message and an empty streaming assistant message, atomically.

    ``must_exist``: the caller knows this messageId was sent before (cache); if the
    database no longer has it (retention), nothing is generated again.
    """
    # Serialise one user's turn starts (the per-user count below must not race).
    conn.execute(sa.select(users.c.id).where(users.c.id == user_id).with_for_update())
    conv = conn.execute(
        sa.select(conversations.c.id, conversations.c.last_seq)
        .where(
            conversations.c.id == conversation_id,
            conversations.c.user_id == user_id,
            conversations.c.deleted_at.is_(None),
        )
        .with_for_update()
    ).first()
    if conv is None:
        return BeginResult(BeginOutcome.NOT_FOUND)
    seen = find_turn(conn, conversation_id=conversation_id, client_message_id=client_message_id)
    if seen is None and must_exist:
        return BeginResult(BeginOutcome.EXPIRED)
    if seen is not None:
        user_msg, assistant = seen
        if user_msg.content != content:
            return BeginResult(BeginOutcome.CONFLICT, user_msg, assistant)
        return BeginResult(BeginOutcome.DUPLICATE, user_msg, assistant)
    # One query answers both: is this conversation busy, how many turns does the user run.
    streaming = conn.execute(
        sa.select(messages.c.conversation_id).where(
            messages.c.user_id == user_id, messages.c.status == STREAMING
        )
    ).all()
    if any(row[0] == conversation_id for row in streaming):
        return BeginResult(BeginOutcome.BUSY)
    if len(streaming) >= max_user_turns:
        return BeginResult(BeginOutcome.TOO_MANY)
    now = utcnow()
    user_seq = conv.last_seq + 1
    history = _history(conn, conversation_id, user_seq) if conv.last_seq else []
    user_id_new, assistant_id = str(uuid.uuid4()), str(uuid.uuid4())
    common = {
        "conversation_id": conversation_id,
        "user_id": user_id,
        "created_at": now,
        "updated_at": now,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "chunk_count": 0,
        "deleted_at": None,
    }
    rows = [
        {
            **common,
            "id": user_id_new,
            "seq": user_seq,
            "role": "user",
            "content": content,
            "status": "completed",
            "client_message_id": client_message_id,
            "parent_id": None,
        },
        {
            **common,
            "id": assistant_id,
            "seq": user_seq + 1,
            "role": "assistant",
            "content": "",
            "status": STREAMING,
            "client_message_id": None,
            "parent_id": user_id_new,
        },
    ]
    conn.execute(messages.insert(), rows)
    conn.execute(
        conversations.update()
        .where(conversations.c.id == conversation_id)
        .values(last_seq=user_seq + 1, updated_at=now)
    )
    # The rows are exactly what was inserted: no read-back round trips.
    return BeginResult(
        BeginOutcome.STARTED,
        MessageRecord(**rows[0]),
        MessageRecord(**rows[1]),
        [*history, ("user", content)],
    )


def checkpoint_many(conn: Connection, items: list[tuple[str, str, int]]) -> None:
    """Checkpoint several streaming messages in one transaction: ``(id, text, chunks)``."""
    if not items:
        return
    conn.execute(
        messages.update()
        .where(messages.c.id == sa.bindparam("mid"), messages.c.status == STREAMING)
        .values(
            content=sa.bindparam("text"), chunk_count=sa.bindparam("chunks"), updated_at=utcnow()
        ),
        [{"mid": mid, "text": text, "chunks": chunks} for mid, text, chunks in items],
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
        messages.update()
        .where(messages.c.id == message_id, messages.c.status == STREAMING)
        .values(
            content=content,
            status=status,
            finish_reason=finish_reason,
            chunk_count=chunk_count,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            updated_at=utcnow(),
        )
    )
    return res.rowcount == 1


def interrupt_streaming(conn: Connection) -> int:
    """Single instance start-up: turns left streaming by a dead process end ``interrupted``."""
    return conn.execute(
        messages.update()
        .where(messages.c.status == STREAMING)
        .values(status="interrupted", finish_reason="interrupted", updated_at=utcnow())
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
