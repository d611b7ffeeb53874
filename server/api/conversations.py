"""Conversation routes. One ownership rule: not yours answers exactly like not there (404)."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from quart import Blueprint, Response, g, request

from protocol.outgoing import message_data
from server.api.common import client_ip, parse_body, require_principal, services
from server.api.schemas import NewConversation, RenameConversation, conversation_json
from server.errors import ApiError
from store import conversations as repo
from store.audit import record_event
from store.records import ConversationRecord

__all__ = ["ConversationTurns", "create_blueprint"]

DEFAULT_PAGE = 50
MAX_PAGE = 200


def _int_arg(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError("VALIDATION_FAILED", f"{name}: must be an integer") from exc
    if not lo <= value <= hi:
        raise ApiError("VALIDATION_FAILED", f"{name}: must be between {lo} and {hi}")
    return value


def _conv_id(raw: str) -> str:
    """Ids are UUIDs; anything else cannot exist, so it is 404 like any unknown id."""
    try:
        return str(uuid.UUID(raw))
    except ValueError as exc:
        raise ApiError("NOT_FOUND", "no such conversation") from exc


async def _owned(conversation_id: str, user_id: str) -> ConversationRecord:
    conv = await services().db.read(
        lambda c: repo.get_conversation(c, conversation_id, user_id=user_id)
    )
    if conv is None:
        raise ApiError("NOT_FOUND", "no such conversation")
    return conv


class ConversationTurns(Protocol):
    """What these routes need of the turns: a deleted conversation's turn stops."""

    async def cancel_conversation(self, conversation_id: str) -> None: ...


def create_blueprint(turns: ConversationTurns) -> Blueprint:
    """The conversation routes, bound to this server's turns."""
    bp = Blueprint("conversations", __name__)

    @bp.post("/conversations")
    async def create() -> tuple[dict[str, Any], int]:
        principal = await require_principal()
        body = await parse_body(NewConversation, optional=True)
        s = services().settings
        cap = (
            s.guest_max_conversations if principal.kind == "guest" else s.max_conversations_per_user
        )

        def work(c: Any) -> ConversationRecord | None:
            # a soft cap: two creates at once may both pass the count (by one, not more)
            if repo.count_conversations(c, principal.user_id) >= cap:
                return None
            return repo.create_conversation(
                c, user_id=principal.user_id, title=body.title or "New conversation"
            )

        conv = await services().db.tx(work)
        if conv is None:
            raise ApiError("CONFLICT", f"at most {cap} conversations; delete some first")
        return conversation_json(conv), 201

    @bp.get("/conversations")
    async def list_() -> dict[str, Any]:
        principal = await require_principal()
        limit = _int_arg("limit", DEFAULT_PAGE, lo=1, hi=MAX_PAGE)
        cursor = request.args.get("cursor") or None
        try:
            items, next_cursor = await services().db.read(
                lambda c: repo.list_conversations(
                    c, user_id=principal.user_id, limit=limit, cursor=cursor
                )
            )
        except repo.BadCursor as exc:
            raise ApiError("VALIDATION_FAILED", "cursor: not a cursor from this server") from exc
        return {"items": [conversation_json(c) for c in items], "nextCursor": next_cursor}

    @bp.get("/conversations/<conversation_id>")
    async def read(conversation_id: str) -> dict[str, Any]:
        principal = await require_principal()
        return conversation_json(await _owned(_conv_id(conversation_id), principal.user_id))

    @bp.patch("/conversations/<conversation_id>")
    async def rename(conversation_id: str) -> dict[str, Any]:
        principal = await require_principal()
        cid = _conv_id(conversation_id)
        body = await parse_body(RenameConversation)
        conv = await services().db.tx(
            lambda c: repo.rename_conversation(c, cid, user_id=principal.user_id, title=body.title)
        )
        if conv is None:
            raise ApiError("NOT_FOUND", "no such conversation")
        return conversation_json(conv)

    @bp.delete("/conversations/<conversation_id>")
    async def delete(conversation_id: str) -> Response:
        principal = await require_principal()
        cid = _conv_id(conversation_id)
        ip = client_ip()
        trace = g.get("trace_id")

        def work(c: Any) -> bool:
            ok = repo.soft_delete_conversation(c, cid, user_id=principal.user_id)
            if ok:
                record_event(
                    c,
                    action="conversation_delete",
                    subject_id=principal.user_id,
                    actor_id=principal.user_id,
                    ip=ip,
                    trace_id=trace,
                    details={"conversationId": cid},
                )
            return ok

        if not await services().db.tx(work):
            raise ApiError("NOT_FOUND", "no such conversation")
        await turns.cancel_conversation(cid)
        return Response(b"", status=204)

    @bp.get("/conversations/<conversation_id>/messages")
    async def history(conversation_id: str) -> dict[str, Any]:
        principal = await require_principal()
        cid = _conv_id(conversation_id)
        after = _int_arg("afterSeq", 0, lo=0, hi=2**31 - 1)
        limit = _int_arg("limit", 100, lo=1, hi=500)
        await _owned(cid, principal.user_id)
        rows = await services().db.read(
            lambda c: repo.list_messages(c, cid, after_seq=after, limit=limit + 1)
        )
        items = rows[:limit]
        next_cursor = str(items[-1].seq) if len(rows) > limit else None
        return {"items": [message_data(m) for m in items], "nextCursor": next_cursor}

    return bp
