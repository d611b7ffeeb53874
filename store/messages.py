"""Turn storage: the user message and its assistant message, checkpoints, the final write.

One turn = two rows written in one transaction: the user's message (``seq``
n+1, keyed by the client's ``messageId``) and the assistant's (``seq`` n+2,
status ``streaming``). The conversation row is locked while the sequence
numbers are taken, so ``seq`` never repeats and never skips.

Over 400 lines: the turn's rows are one unit (start, checkpoint, end, the reads of resume).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from protocol.frames import FinishReason, MessageStatus, Role
from store.conversations import stored_bytes_many
from store.db import utcnow
from store.records import MessageRecord
from store.schema import conversations, messages, users
from store.tombstones import tombstoned

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
CONTEXT_MESSAGES = 50


def _ids(name: str) -> sa.BindParameter[list[str]]:
    return sa.bindparam(name, expanding=True)


# The turn path's statements, built once: built per call, each cost ~60 µs of CPU more
# (ad hoc, SQLAlchemy 2.0 on this box: 77 against 18.5 µs for one SELECT ... IN on SQLite)
# and left its BindParameters for the garbage collector.
_LOCK_USERS = sa.select(users.c.id).where(users.c.id.in_(_ids("users"))).with_for_update()
_LOCK_CONVERSATIONS = (
    sa.select(conversations.c.id, conversations.c.user_id, conversations.c.last_seq)
    .where(conversations.c.id.in_(_ids("convs")), conversations.c.deleted_at.is_(None))
    .with_for_update()
)
_SEEN = sa.select(messages).where(
    messages.c.conversation_id.in_(_ids("convs")),
    messages.c.client_message_id.in_(_ids("client_ids")),
)
_ANSWERS = (
    sa.select(messages).where(messages.c.parent_id.in_(_ids("parents"))).order_by(messages.c.seq)
)
_STREAMING_OF = sa.select(messages.c.user_id, messages.c.conversation_id).where(
    messages.c.user_id.in_(_ids("users")), messages.c.status == STREAMING
)
_HISTORY = (
    sa.select(messages.c.role, messages.c.content, messages.c.status)
    .where(
        messages.c.conversation_id == sa.bindparam("conv"),
        messages.c.seq < sa.bindparam("below"),
        messages.c.deleted_at.is_(None),
    )
    .order_by(messages.c.seq.desc())
    .limit(CONTEXT_MESSAGES)
)
_MOVE_SEQ = (
    conversations.update()
    .where(conversations.c.id.in_(_ids("convs")))
    .values(
        last_seq=conversations.c.last_seq + sa.bindparam("step"), updated_at=sa.bindparam("now")
    )
)
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


class BeginOutcome(enum.Enum):
    STARTED = "started"
    DUPLICATE = "duplicate"  # same messageId and content: replay or join
    CONFLICT = "conflict"  # same messageId, other content
    NOT_FOUND = "not_found"
    BUSY = "busy"  # a turn of this conversation is streaming
    EXPIRED = "expired"  # the cache knew the messageId, the database no longer has it
    TOO_MANY = "too_many"  # the user has the maximum of turns streaming
    OVER_QUOTA = "over_quota"  # the user keeps max_stored_bytes or more


@dataclass(frozen=True, slots=True)
class BeginResult:
    outcome: BeginOutcome
    user_message: MessageRecord | None = None
    assistant_message: MessageRecord | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    stored_bytes: int | None = None  # what the user keeps, when the request asked to measure


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
    rows = conn.execute(_HISTORY, {"conv": conversation_id, "below": below_seq}).all()
    out = [(r.role, r.content) for r in reversed(rows) if r.content or r.role == Role.USER]
    return [(role, content) for role, content in out if content]


@dataclass(frozen=True, slots=True)
class BeginRequest:
    user_id: str
    conversation_id: str
    client_message_id: str
    content: str
    must_exist: bool = False  # the cache knew this messageId (see begin_turns)
    max_turns: int | None = None  # this caller's cap on turns at once (guests: fewer)
    max_stored_bytes: int | None = None  # measure what the user keeps; refuse at this cap


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
    """One turn start (see :func:`begin_turns`)."""
    req = BeginRequest(user_id, conversation_id, client_message_id, content, must_exist)
    return begin_turns(conn, [req], max_user_turns=max_user_turns)[0]


def begin_turns(
    conn: Connection, requests: list[BeginRequest], *, max_user_turns: int = 3
) -> list[BeginResult]:
    """Start several turns in one transaction (group commit); one result per request, in order.

    Each started turn stores a user message (``seq`` n+1) and an empty ``streaming``
    assistant message (n+2). The users' and conversations' rows are locked first, so
    sequence numbers never repeat or skip and the per-user count cannot race. Requests are
    decided in order, each seeing the ones before it (a second send to the same
    conversation in one batch is busy, or a duplicate of the first). ``must_exist``: the
    caller knows the messageId was sent before; if the database no longer has it
    (retention), nothing is generated again (``EXPIRED``). ``max_stored_bytes``: what the
    user keeps is measured (one grouped query for the batch) and a new turn is refused at
    the cap (``OVER_QUOTA``; a duplicate still replays). A handful of set-based queries
    serve the whole batch.
    """
    if not requests:
        return []
    user_ids = sorted({r.user_id for r in requests})
    conv_ids = sorted({r.conversation_id for r in requests})
    conn.execute(_LOCK_USERS, {"users": user_ids})
    convs = {row.id: row for row in conn.execute(_LOCK_CONVERSATIONS, {"convs": conv_ids})}
    last_seq = {cid: int(row.last_seq) for cid, row in convs.items()}
    seen: dict[tuple[str, str], MessageRecord] = {
        (m.conversation_id, str(m.client_message_id)): m
        for m in (
            MessageRecord.from_row(r)
            for r in conn.execute(
                _SEEN,
                {"convs": conv_ids, "client_ids": sorted({r.client_message_id for r in requests})},
            )
        )
    }
    # messageIds whose message retention purged: never generated again (REPLAY_EXPIRED)
    gone = tombstoned(
        conn, {(r.conversation_id, r.client_message_id) for r in requests} - set(seen)
    )
    answers: dict[str, MessageRecord] = {}
    if seen:
        for r in conn.execute(_ANSWERS, {"parents": [m.id for m in seen.values()]}):
            rec = MessageRecord.from_row(r)
            answers.setdefault(str(rec.parent_id), rec)
    streaming: dict[str, set[str]] = {}  # user -> conversations with a streaming turn
    for row in conn.execute(_STREAMING_OF, {"users": user_ids}):
        streaming.setdefault(row.user_id, set()).add(row.conversation_id)
    kept = stored_bytes_many(
        conn, sorted({r.user_id for r in requests if r.max_stored_bytes is not None})
    )

    now = utcnow()
    results: list[BeginResult] = []
    rows: list[dict[str, object]] = []
    for req in requests:
        conv = convs.get(req.conversation_id)
        if conv is None or conv.user_id != req.user_id:
            results.append(BeginResult(BeginOutcome.NOT_FOUND))
            continue
        key = (req.conversation_id, req.client_message_id)
        prior = seen.get(key)
        if prior is None and (req.must_exist or key in gone):
            results.append(BeginResult(BeginOutcome.EXPIRED))
            continue
        if prior is not None:
            outcome = (
                BeginOutcome.CONFLICT if prior.content != req.content else BeginOutcome.DUPLICATE
            )
            results.append(BeginResult(outcome, prior, answers.get(prior.id)))
            continue
        used = kept.get(req.user_id) if req.max_stored_bytes is not None else None
        if used is not None and req.max_stored_bytes is not None and used >= req.max_stored_bytes:
            results.append(BeginResult(BeginOutcome.OVER_QUOTA, stored_bytes=used))
            continue
        busy = streaming.get(req.user_id, set())
        if req.conversation_id in busy:
            results.append(BeginResult(BeginOutcome.BUSY))
            continue
        if len(busy) >= (req.max_turns or max_user_turns):
            results.append(BeginResult(BeginOutcome.TOO_MANY))
            continue
        user_seq = last_seq[req.conversation_id] + 1
        history = _history(conn, req.conversation_id, user_seq) if user_seq > 1 else []
        common: dict[str, object] = {
            "conversation_id": req.conversation_id,
            "user_id": req.user_id,
            "created_at": now,
            "updated_at": now,
            "finish_reason": None,
            "prompt_tokens": None,
            "completion_tokens": None,
            "chunk_count": 0,
            "deleted_at": None,
        }
        user_row = {
            **common,
            "id": str(uuid.uuid4()),
            "seq": user_seq,
            "role": Role.USER.value,
            "content": req.content,
            "status": MessageStatus.COMPLETED.value,
            "client_message_id": req.client_message_id,
            "parent_id": None,
        }
        assistant_row = {
            **common,
            "id": str(uuid.uuid4()),
            "seq": user_seq + 1,
            "role": "assistant",
            "content": "",
            "status": STREAMING,
            "client_message_id": None,
            "parent_id": user_row["id"],
        }
        rows += [user_row, assistant_row]
        user_rec, assistant_rec = MessageRecord(**user_row), MessageRecord(**assistant_row)  # type: ignore[arg-type]
        # Later requests of this batch see this one.
        last_seq[req.conversation_id] = user_seq + 1
        seen[key] = user_rec
        answers[user_rec.id] = assistant_rec
        streaming.setdefault(req.user_id, set()).add(req.conversation_id)
        if used is not None:
            kept[req.user_id] = used = used + len(req.content)
        results.append(
            BeginResult(
                BeginOutcome.STARTED,
                user_rec,
                assistant_rec,
                [*history, (Role.USER.value, req.content)],
                stored_bytes=used,
            )
        )
    if rows:
        conn.execute(messages.insert(), rows)
        moved = {
            cid: seq
            for cid, seq in last_seq.items()
            if cid in convs and seq != int(convs[cid].last_seq)
        }
        # One statement per distinct step (a batch starts one turn per conversation: one
        # step, 2). Not a CASE with one WHEN per conversation: each batch size compiled to a
        # new entry of the engine's cache, holding its values (up to ~240 KB at 64 turns;
        # ~8 MB over every size, filled over hours: RSS growth in the soak).
        steps: dict[int, list[str]] = {}
        for cid, seq in moved.items():
            steps.setdefault(seq - int(convs[cid].last_seq), []).append(cid)
        for step, cids in sorted(steps.items()):
            conn.execute(_MOVE_SEQ, {"convs": sorted(cids), "step": step, "now": now})
    return results


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
