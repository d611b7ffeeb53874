"""``GET /api/v1/admin/audit``: the audit trail for admins (contract section 7).

``format=json`` answers one page ``{items, nextCursor}``; ``ndjson`` and ``csv`` stream
every matching event from the cursor on, read a page at a time (memory stays bounded
whatever the size: :func:`audit_chunks`). Reading the trail is itself audited.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson
from quart import Blueprint, Response, request

from server.api.common import require_principal, services
from server.errors import ApiError
from server.services import Services
from store import users as users_repo
from store.audit import AuditFilter, event_json, list_events, record_event
from store.records import UserRole

__all__ = ["CSV_COLUMNS", "audit_chunks", "bp"]

bp = Blueprint("admin", __name__)

PAGE = 1000
DEFAULT_LIMIT = 100
CSV_COLUMNS = (
    "id",
    "action",
    "actorId",
    "targetType",
    "targetId",
    "ip",
    "userAgent",
    "traceId",
    "createdAt",
)
_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv"}


def _time_arg(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError("VALIDATION_FAILED", f"{name}: an ISO 8601 time") from exc
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def _cursor() -> int:
    raw = request.args.get("cursor") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError("VALIDATION_FAILED", "cursor: not a cursor from this server")
    return int(raw)


def _limit() -> int:
    raw = request.args.get("limit") or str(DEFAULT_LIMIT)
    if not (raw.isascii() and raw.isdigit() and len(raw) < 6) or not 1 <= int(raw) <= PAGE:
        raise ApiError("VALIDATION_FAILED", f"limit: between 1 and {PAGE}")
    return int(raw)


def _line(fmt: str, item: dict[str, Any]) -> str:
    if fmt == "ndjson":
        return orjson.dumps(item).decode() + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(item[k]) for k in CSV_COLUMNS])
    return buf.getvalue()


def _cell(value: Any) -> str:
    """A CSV cell; one a spreadsheet would take for a formula (a user agent is the
    client's to choose) is quoted with a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def audit_chunks(
    svc: Services, f: AuditFilter, fmt: str, *, after_id: int = 0, page: int = PAGE
) -> AsyncIterator[bytes]:
    """Every event matching ``f`` after ``after_id`` as NDJSON or CSV, one chunk a page."""
    if fmt == "csv":
        yield (",".join(CSV_COLUMNS) + "\n").encode()
    while True:
        rows = await svc.db.read(partial(list_events, f=f, after_id=after_id, limit=page))
        if not rows:
            return
        yield "".join(_line(fmt, event_json(r)) for r in rows).encode()
        if len(rows) < page:
            return
        after_id = int(rows[-1].id)


@bp.get("/admin/audit")
async def audit() -> Any:
    svc = services()
    principal = await require_principal()
    user = await svc.db.read(lambda c: users_repo.get_user(c, principal.user_id))
    if user is None or user.role != UserRole.ADMIN:
        raise ApiError("FORBIDDEN", "the admin role is required")
    fmt = request.args.get("format") or "json"
    if fmt not in _TYPES:
        raise ApiError("VALIDATION_FAILED", "format: json, ndjson or csv")
    f = AuditFilter(
        actor=request.args.get("actor") or None,
        action=request.args.get("action") or None,
        target=request.args.get("target") or None,
        target_type=request.args.get("targetType") or None,
        since=_time_arg("from"),
        until=_time_arg("to"),
    )
    after = _cursor()
    limit = _limit()
    asked = {k: v for k, v in request.args.items() if k != "cursor"}
    await svc.db.tx(
        lambda c: record_event(
            c,
            action="admin_audit_read",
            subject_id=principal.user_id,
            actor_id=principal.user_id,
            target_type="audit",
            target_id="audit",
            details={"query": asked},
        )
    )
    if fmt == "json":
        rows = await svc.db.read(lambda c: list_events(c, f, after_id=after, limit=limit + 1))
        items = [event_json(r) for r in rows[:limit]]
        nxt = items[-1]["id"] if len(rows) > limit else None
        return {"items": items, "nextCursor": nxt}
    return Response(
        audit_chunks(svc, f, fmt, after_id=after),
        content_type=_TYPES[fmt] + ("; charset=utf-8" if fmt == "csv" else ""),
    )
