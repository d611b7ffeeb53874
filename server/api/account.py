"""Account routes: the caller's sessions (list, revoke) and the caller (read, delete)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g
from sqlalchemy.engine import Connection

from server.api.common import client_ip, require_principal, services
from server.api.schemas import session_json, user_json
from server.auth.identity import Principal, revoke_sessions
from server.errors import ApiError
from store import sessions as sessions_repo
from store import users as users_repo
from store.audit import record_event
from store.records import UserRecord

__all__ = ["bp"]

bp = Blueprint("account", __name__)


def _trace() -> str | None:
    return g.get("trace_id")


@bp.get("/sessions")
async def list_sessions() -> dict[str, Any]:
    svc = services()
    principal = await require_principal()
    rows = await svc.db.read(lambda c: sessions_repo.list_active_sessions(c, principal.user_id))
    return {
        "items": [session_json(s, current_sid=principal.session_id) for s in rows],
        "nextCursor": None,
    }


@bp.delete("/sessions/<session_id>")
async def delete_session(session_id: str) -> Response:
    svc = services()
    principal = await require_principal()
    ip = client_ip()

    def work(conn: Connection) -> bool:
        ok = sessions_repo.revoke_session(
            conn, session_id[:64], reason="revoked", user_id=principal.user_id
        )
        if ok:
            record_event(
                conn,
                action="session_revoke",
                subject_id=principal.user_id,
                actor_id=principal.user_id,
                ip=ip,
                trace_id=_trace(),
                details={"sessionId": session_id},
            )
        return ok

    if not await svc.db.tx(work):
        raise ApiError("NOT_FOUND", "no such session")
    await revoke_sessions(svc, [session_id])
    return Response(b"", status=204)


async def current_user(principal: Principal) -> UserRecord:
    svc = services()
    user = await svc.db.read(lambda c: users_repo.get_user(c, principal.user_id))
    if user is None:
        raise ApiError("AUTH_INVALID", "account no longer exists")
    return user


@bp.get("/me")
async def me() -> dict[str, Any]:
    return user_json(await current_user(await require_principal()))


@bp.delete("/me")
async def delete_me() -> Response:
    svc = services()
    principal = await require_principal()
    ip = client_ip()

    def work(conn: Connection) -> list[str]:
        from store.conversations import soft_delete_all_for_user

        users_repo.soft_delete_user(conn, principal.user_id)
        soft_delete_all_for_user(conn, principal.user_id)
        ids = sessions_repo.revoke_all_sessions(conn, principal.user_id, reason="account_delete")
        record_event(
            conn,
            action="account_delete",
            subject_id=principal.user_id,
            actor_id=principal.user_id,
            ip=ip,
            trace_id=_trace(),
        )
        return ids

    ids = await svc.db.tx(work)
    await revoke_sessions(svc, sorted(set(ids) | {principal.session_id}))
    return Response(b"", status=204)
