"""``GET /api/v1/me/export``: the caller's data as one JSON document (contract section 7).

``{"user", "sessions", "conversations": [{..., "messages": [...]}], "auditEvents",
"exportedAt"}``, streamed: conversations, messages and events are read a page at a time
and written as they come (:func:`export_chunks`), so 10,000 messages or 1,000,000 cost the
same memory. The export is audited before the first byte goes out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson
from quart import Blueprint, Response

from protocol.outgoing import message_data
from server.api.common import require_principal, services
from server.api.schemas import conversation_json, session_json, user_json
from server.errors import ApiError
from server.services import Services
from store import users as users_repo
from store.audit import AuditFilter, event_json, list_events, record_event
from store.conversations import list_messages
from store.export import conversations_page, sessions_of
from store.records import UserRecord

__all__ = ["bp", "export_chunks"]

bp = Blueprint("export", __name__)

PAGE = 500


def _dump(value: Any) -> bytes:
    return orjson.dumps(value)


async def export_chunks(
    svc: Services, user: UserRecord, *, current_sid: str | None = None, page: int = PAGE
) -> AsyncIterator[bytes]:
    """The export document in pieces, each at most one page of rows."""
    uid = user.id
    sessions = await svc.db.read(lambda c: sessions_of(c, uid))
    yield b'{"user":' + _dump(user_json(user))
    yield b',"sessions":' + _dump([session_json(s, current_sid=current_sid) for s in sessions])
    yield b',"conversations":['
    after, first = "", True
    while True:
        convs = await svc.db.read(
            partial(conversations_page, user_id=uid, after_id=after, limit=max(1, page // 5))
        )
        for conv in convs:
            head = _dump(conversation_json(conv))
            yield (b"" if first else b",") + head[:-1] + b',"messages":['
            first = False
            seq, lead = 0, b""
            while True:
                msgs = await svc.db.read(
                    partial(list_messages, conversation_id=conv.id, after_seq=seq, limit=page)
                )
                if msgs:
                    # one buffer a page (orjson gives every small dump a 16 KiB buffer)
                    yield lead + _dump([message_data(m) for m in msgs])[1:-1]
                    lead, seq = b",", msgs[-1].seq
                if len(msgs) < page:
                    break
            yield b"]}"
        if not convs:
            break
        after = convs[-1].id
    yield b'],"auditEvents":['
    event_id, lead = 0, b""
    mine = AuditFilter(subject=uid)
    while True:
        rows = await svc.db.read(partial(list_events, f=mine, after_id=event_id, limit=page))
        if rows:
            yield lead + _dump([event_json(r) for r in rows])[1:-1]
            lead, event_id = b",", int(rows[-1].id)
        if len(rows) < page:
            break
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    yield b'],"exportedAt":' + _dump(now) + b"}"


@bp.get("/me/export")
async def export() -> Response:
    svc = services()
    principal = await require_principal()
    user = await svc.db.read(lambda c: users_repo.get_user(c, principal.user_id))
    if user is None:
        raise ApiError("AUTH_INVALID", "account no longer exists")
    await svc.db.tx(
        lambda c: record_event(
            c, action="export", subject_id=user.id, actor_id=user.id, target_type="user"
        )
    )
    resp = Response(
        export_chunks(svc, user, current_sid=principal.session_id),
        content_type="application/json",
    )
    resp.headers["Content-Disposition"] = 'attachment; filename="parley-export.json"'
    return resp
