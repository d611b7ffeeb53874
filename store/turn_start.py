"""Turn starts: a batch of them stored in one transaction (group commit).

One turn = two rows: the user's message (``seq`` n+1, keyed by the client's
``messageId``) and the assistant's (``seq`` n+2, status ``streaming``). The users' and
conversations' rows are locked while the sequence numbers are taken, so ``seq`` never
repeats or skips and a user's count of streaming turns cannot race.

The same decision (:func:`_decide`) runs over what two readers find:

- the portable one (SQLAlchemy Core, SQLite and MySQL): one statement per read, and on
  MySQL one round trip each (8 for a start);
- on a connection of the turn-start lane (MySQL opened with multi-statements,
  ``Database.tx(..., multi_statements=True)``): every read in one round trip, and every
  write with the COMMIT in a second. A round trip from a worker thread costs the
  network, the driver and a wait for the event loop to hand back the GIL: fewer of them
  is most of what a start's latency can lose (``benchmarks/turn_start.py``).

Over 400 lines: the decision and its two readers are one unit (the same reads, in two
forms, feeding one decision; a change to one must be seen beside the others).
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from protocol.frames import MessageStatus, Role
from store.conversations import stored_bytes_many
from store.db import multi_statement_connection, utcnow
from store.records import MessageRecord
from store.schema import conversations, messages, users
from store.sessions import live_sessions
from store.tombstones import tombstone_key, tombstoned

__all__ = [
    "CONTEXT_MESSAGES",
    "BeginOutcome",
    "BeginRequest",
    "BeginResult",
    "begin_turn",
    "begin_turns",
]

STREAMING = MessageStatus.STREAMING.value
CONTEXT_MESSAGES = 50


class BeginOutcome(enum.Enum):
    STARTED = "started"
    DUPLICATE = "duplicate"  # same messageId and content: replay or join
    CONFLICT = "conflict"  # same messageId, other content
    NOT_FOUND = "not_found"
    BUSY = "busy"  # a turn of this conversation is streaming
    EXPIRED = "expired"  # the cache knew the messageId, the database no longer has it
    TOO_MANY = "too_many"  # the user has the maximum of turns streaming
    OVER_QUOTA = "over_quota"  # the user keeps max_stored_bytes or more
    SESSION_REVOKED = "session_revoked"  # check_session: revoked, expired or user deleted


@dataclass(frozen=True, slots=True)
class BeginResult:
    outcome: BeginOutcome
    user_message: MessageRecord | None = None
    assistant_message: MessageRecord | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    stored_bytes: int | None = None  # what the user keeps, when the request asked to measure


@dataclass(frozen=True, slots=True)
class BeginRequest:
    user_id: str
    conversation_id: str
    client_message_id: str
    content: str
    must_exist: bool = False  # the cache knew this messageId (see begin_turns)
    max_turns: int | None = None  # this caller's cap on turns at once (guests: fewer)
    max_stored_bytes: int | None = None  # measure what the user keeps; refuse at this cap
    # the caller's session, when nothing fresh says it is live: the start asks the database
    # (in its own transaction, instead of a read of its own before it)
    check_session: str | None = None


def _ids(name: str) -> sa.BindParameter[list[str]]:
    return sa.bindparam(name, expanding=True)


# The portable reader's statements, built once: built per call, each cost ~60 µs of CPU more
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
    sa.select(messages.c.role, messages.c.content)
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


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a batch asks the database about (sorted: rows are locked in this order)."""

    users: list[str]
    convs: list[str]
    client_ids: list[str]
    pairs: set[tuple[str, str]]  # (conversation, messageId)
    measure: list[str]  # users whose stored bytes are measured
    sessions: list[str]  # sessions to check

    @classmethod
    def of(cls, requests: list[BeginRequest]) -> _Asked:
        return cls(
            sorted({r.user_id for r in requests}),
            sorted({r.conversation_id for r in requests}),
            sorted({r.client_message_id for r in requests}),
            {(r.conversation_id, r.client_message_id) for r in requests},
            sorted({r.user_id for r in requests if r.max_stored_bytes is not None}),
            sorted({r.check_session for r in requests if r.check_session}),
        )


@dataclass(slots=True)
class _Found:
    """What the reads found, under the locks."""

    convs: dict[str, tuple[str, int]]  # id -> (owner, last_seq)
    seen: dict[tuple[str, str], MessageRecord]  # (conversation, messageId) -> user message
    gone: set[tuple[str, str]]  # tombstoned (conversation, messageId) pairs
    answers: dict[str, MessageRecord]  # user message id -> its assistant message
    streaming: dict[str, set[str]]  # user -> conversations with a streaming turn
    kept: dict[str, int]  # user -> what they keep (asked for only)
    live_sessions: set[str]  # of the requests' check_session ids, the live ones
    history: Callable[[str, int], list[tuple[str, str]]]  # (conversation, below seq)


def _context(rows: Sequence[Any]) -> list[tuple[str, str]]:
    """Newest-first ``(role, content)`` rows → the context, oldest first (an empty
    assistant message, e.g. a failed turn's, is left out)."""
    out = [(r[0], r[1]) for r in reversed(rows) if r[1] or r[0] == Role.USER]
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
    the cap (``OVER_QUOTA``; a duplicate still replays). ``check_session``: a session not
    live refuses the request (``SESSION_REVOKED``) before anything else.

    On the turn-start lane the writes' round trip ends with the COMMIT: a start that
    stores anything is committed when this returns, so it must be its transaction's last
    work (the transaction's own commit then sends nothing).
    """
    if not requests:
        return []
    multi = multi_statement_connection(conn)
    asked = _Asked.of(requests)
    found = _read_multi(conn, multi, asked) if multi is not None else _read(conn, asked)
    results, rows, steps, now = _decide(found, requests, max_user_turns)
    if rows:
        if multi is not None:
            _write_multi(conn, multi, rows, steps, now)
        else:
            conn.execute(messages.insert(), rows)
            for step, cids in steps:
                conn.execute(_MOVE_SEQ, {"convs": cids, "step": step, "now": now})
    return results


def _read(conn: Connection, asked: _Asked) -> _Found:
    """The portable reader: one statement each."""
    conn.execute(_LOCK_USERS, {"users": asked.users})
    convs = {
        row.id: (row.user_id, int(row.last_seq))
        for row in conn.execute(_LOCK_CONVERSATIONS, {"convs": asked.convs})
    }
    seen: dict[tuple[str, str], MessageRecord] = {
        (m.conversation_id, str(m.client_message_id)): m
        for m in (
            MessageRecord.from_row(r)
            for r in conn.execute(_SEEN, {"convs": asked.convs, "client_ids": asked.client_ids})
        )
    }
    # messageIds whose message retention purged: never generated again (REPLAY_EXPIRED)
    gone = tombstoned(conn, asked.pairs - set(seen))
    answers: dict[str, MessageRecord] = {}
    if seen:
        for r in conn.execute(_ANSWERS, {"parents": [m.id for m in seen.values()]}):
            rec = MessageRecord.from_row(r)
            answers.setdefault(str(rec.parent_id), rec)
    streaming: dict[str, set[str]] = {}
    for row in conn.execute(_STREAMING_OF, {"users": asked.users}):
        streaming.setdefault(row.user_id, set()).add(row.conversation_id)
    kept = stored_bytes_many(conn, asked.measure)
    live = live_sessions(conn, asked.sessions)

    def history(conversation_id: str, below_seq: int) -> list[tuple[str, str]]:
        rows = conn.execute(_HISTORY, {"conv": conversation_id, "below": below_seq}).all()
        return _context(rows)

    return _Found(convs, seen, gone, answers, streaming, kept, live, history)


def _decide(
    found: _Found, requests: list[BeginRequest], max_user_turns: int
) -> tuple[list[BeginResult], list[dict[str, object]], list[tuple[int, list[str]]], Any]:
    """Each request in order, each seeing the ones before it: the results, the rows to
    insert, and the sequence moves ``(step, conversations)``."""
    convs, seen, answers, streaming, kept = (
        found.convs,
        found.seen,
        found.answers,
        found.streaming,
        found.kept,
    )
    last_seq = {cid: seq for cid, (_owner, seq) in convs.items()}
    now = utcnow()
    results: list[BeginResult] = []
    rows: list[dict[str, object]] = []
    for req in requests:
        if req.check_session and req.check_session not in found.live_sessions:
            results.append(BeginResult(BeginOutcome.SESSION_REVOKED))
            continue
        conv = convs.get(req.conversation_id)
        if conv is None or conv[0] != req.user_id:
            results.append(BeginResult(BeginOutcome.NOT_FOUND))
            continue
        key = (req.conversation_id, req.client_message_id)
        prior = seen.get(key)
        if prior is None and (req.must_exist or key in found.gone):
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
        history = found.history(req.conversation_id, user_seq) if user_seq > 1 else []
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
    # One statement per distinct step (a batch starts one turn per conversation: one step,
    # 2). Not a CASE with one WHEN per conversation: each batch size compiled to a new
    # entry of the engine's cache, holding its values (up to ~240 KB at 64 turns; ~8 MB
    # over every size, filled over hours: RSS growth in the soak).
    by_step: dict[int, list[str]] = {}
    for cid, seq in last_seq.items():
        if seq != convs[cid][1]:
            by_step.setdefault(seq - convs[cid][1], []).append(cid)
    steps = [(step, sorted(cids)) for step, cids in sorted(by_step.items())]
    return results, rows, steps, now


# -- the multi-statement lane (MySQL) -----------------------------------------------------

_MESSAGE_COLUMNS = [f.name for f in fields(MessageRecord)]
_MSG_COLS = ", ".join(_MESSAGE_COLUMNS)


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _run_sets(conn: Connection, dbapi: Any, sql: str, params: list[object]) -> list[list[Any]]:
    """Several statements in one round trip; their result sets, in order. A driver error
    becomes SQLAlchemy's (so ``Database.tx`` retries deadlocks as for any statement), with
    the statement's text and without its parameters (message text stays out of logs)."""
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        sets = [list(cursor.fetchall())]
        while cursor.nextset():
            sets.append(list(cursor.fetchall()))
        return sets
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(
            sql,
            None,
            exc,
            conn.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=conn.dialect,
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            cursor.close()


def _read_multi(conn: Connection, dbapi: Any, asked: _Asked) -> _Found:
    """Every read in one round trip: the locks first, then (in the snapshot they leave) the
    messageIds already stored, the tombstones, the users' streaming turns, what they keep
    (asked for only), the sessions to check (if any) and each conversation's context. Only
    the columns the decision needs: a stored messageId (a replay) costs a second round trip
    for its two whole messages."""
    user_ids, conv_ids, client_ids = asked.users, asked.convs, asked.client_ids
    hashes = {tombstone_key(c, m): (c, m) for c, m in asked.pairs}
    measure, sids = asked.measure, asked.sessions
    nu, nc = _marks(len(user_ids)), _marks(len(conv_ids))
    statements = [
        f"SELECT id FROM users WHERE id IN ({nu}) FOR UPDATE",
        f"SELECT id, user_id, last_seq FROM conversations WHERE id IN ({nc})"
        " AND deleted_at IS NULL FOR UPDATE",
        f"SELECT id FROM messages WHERE conversation_id IN ({nc})"
        f" AND client_message_id IN ({_marks(len(client_ids))})",
        f"SELECT key_hash FROM message_tombstones WHERE key_hash IN ({_marks(len(hashes))})",
        f"SELECT user_id, conversation_id FROM messages WHERE user_id IN ({nu}) AND status = %s",
    ]
    params: list[object] = [
        *user_ids,
        *conv_ids,
        *conv_ids,
        *client_ids,
        *sorted(hashes),
        *user_ids,
        STREAMING,
    ]
    if measure:
        statements.append(
            "SELECT c.user_id, SUM(LENGTH(m.content)) FROM messages m JOIN conversations c"
            f" ON c.id = m.conversation_id WHERE c.user_id IN ({_marks(len(measure))})"
            " AND c.deleted_at IS NULL AND m.deleted_at IS NULL GROUP BY c.user_id"
        )
        params += measure
    if sids:
        statements.append(
            "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id"
            f" WHERE s.id IN ({_marks(len(sids))}) AND s.revoked_at IS NULL"
            " AND s.expires_at > %s AND u.deleted_at IS NULL"
        )
        params += [*sids, utcnow()]
    # each conversation's newest messages (all are below the next seq: its row is locked)
    statements.append(
        " UNION ALL ".join(
            "(SELECT conversation_id, role, content FROM messages"
            " WHERE conversation_id = %s AND deleted_at IS NULL"
            f" ORDER BY seq DESC LIMIT {CONTEXT_MESSAGES})"
            for _ in conv_ids
        )
    )
    params += conv_ids
    sets = _run_sets(conn, dbapi, ";\n".join(statements), params)
    _users, conv_rows, seen_rows, gone_rows, streaming_rows, *rest = sets
    history_rows = rest.pop()
    kept = dict.fromkeys(measure, 0)
    if measure:
        for user_id, total in rest.pop(0):
            kept[user_id] = int(total or 0)
    live = {row[0] for row in rest.pop(0)} if sids else set()
    seen: dict[tuple[str, str], MessageRecord] = {}
    answers: dict[str, MessageRecord] = {}
    if seen_rows:  # replays: the stored messages, whole, and their answers
        ids = [row[0] for row in seen_rows]
        marks = _marks(len(ids))
        user_rows, answer_rows = _run_sets(
            conn,
            dbapi,
            f"SELECT {_MSG_COLS} FROM messages WHERE id IN ({marks});\n"
            f"SELECT {_MSG_COLS} FROM messages WHERE parent_id IN ({marks}) ORDER BY seq",
            [*ids, *ids],
        )
        for row in user_rows:
            rec = MessageRecord(*row)
            seen[(rec.conversation_id, str(rec.client_message_id))] = rec
        for row in answer_rows:
            rec = MessageRecord(*row)
            answers.setdefault(str(rec.parent_id), rec)
    streaming: dict[str, set[str]] = {}
    for user_id, conversation_id in streaming_rows:
        streaming.setdefault(user_id, set()).add(conversation_id)
    by_conv: dict[str, list[Any]] = {}
    for row in history_rows:
        by_conv.setdefault(row[0], []).append(row[1:])

    def history(conversation_id: str, _below_seq: int) -> list[tuple[str, str]]:
        return _context(by_conv.get(conversation_id, []))

    return _Found(
        {row[0]: (row[1], int(row[2])) for row in conv_rows},
        seen,
        {hashes[row[0]] for row in gone_rows},
        answers,
        streaming,
        kept,
        live,
        history,
    )


def _write_multi(
    conn: Connection,
    dbapi: Any,
    rows: list[dict[str, object]],
    steps: list[tuple[int, list[str]]],
    now: Any,
) -> None:
    """The inserts, the sequence moves and the COMMIT in one round trip."""
    row_marks = f"({_marks(len(_MESSAGE_COLUMNS))})"
    statements = [
        f"INSERT INTO messages ({_MSG_COLS}) VALUES " + ", ".join([row_marks] * len(rows))
    ]
    params: list[object] = [row[name] for row in rows for name in _MESSAGE_COLUMNS]
    for step, cids in steps:
        statements.append(
            "UPDATE conversations SET last_seq = last_seq + %s, updated_at = %s"
            f" WHERE id IN ({_marks(len(cids))})"
        )
        params += [step, now, *cids]
    statements.append("COMMIT")
    _run_sets(conn, dbapi, ";\n".join(statements), params)
    dbapi.mark_committed()
