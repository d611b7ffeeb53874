"""Audit trail: append-only events (who, what, to what, when, from where). Never PII in clear.

:func:`record_event` runs inside the transaction of the change it records. The request's
ip, user agent and trace id come from :data:`audit_context` when the caller does not pass
them (the HTTP edge sets it; ``trio.to_thread`` carries context variables into the
database thread). Events are read back in id order, a page at a time (:func:`list_events`),
so an export of any size holds one page in memory.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.db import utcnow
from store.schema import audit_events

__all__ = [
    "AUDITED_ACTIONS",
    "AuditContext",
    "AuditFilter",
    "audit_context",
    "email_subject",
    "event_json",
    "event_row",
    "list_events",
    "pseudonym",
    "pseudonymise_user",
    "record_event",
    "record_events",
]

#: Contract section 7, plus ``upgrade`` (a guest becomes registered).
AUDITED_ACTIONS = (
    "register",
    "login",
    "login_failure",
    "token_reuse",
    "logout",
    "session_revoke",
    "account_delete",
    "export",
    "conversation_delete",
    "admin_audit_read",
    "upgrade",
)


@dataclass(frozen=True, slots=True)
class AuditContext:
    ip: str | None = None
    user_agent: str | None = None
    trace_id: str | None = None


audit_context: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar(
    "parley_audit_context", default=None
)


def email_subject(email: str) -> str:
    """Subject id for an event about an email that has no user (e.g. a failed login)."""
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]


def pseudonym(user_id: str) -> str:
    """What a purged user's id becomes in the audit trail: stable, not reversible."""
    return "deleted:" + hashlib.sha256(user_id.encode()).hexdigest()[:24]


def _target(
    subject_id: str, details: dict[str, Any] | None, target_type: str | None
) -> tuple[str, str]:
    if target_type is not None:
        return target_type, subject_id
    d = details or {}
    if "conversationId" in d:
        return "conversation", str(d["conversationId"])
    if "sessionId" in d:
        return "session", str(d["sessionId"])
    return ("email" if subject_id.startswith("email:") else "user"), subject_id


def event_row(
    *,
    action: str,
    subject_id: str,
    actor_id: str | None = None,
    ip: str | None = None,
    trace_id: str | None = None,
    details: dict[str, Any] | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    user_agent: str | None = None,
) -> dict[str, Any]:
    """The ``audit_events`` row :func:`record_event` inserts (for :func:`record_events`)."""
    ctx = audit_context.get() or AuditContext()
    ttype, tid = _target(subject_id, details, target_type)
    return {
        "at": utcnow(),
        "action": action,
        "subject_id": subject_id,
        "actor_id": actor_id,
        "ip": ip or ctx.ip,
        "trace_id": trace_id or ctx.trace_id,
        "details": json.dumps(details, sort_keys=True) if details else None,
        "target_type": ttype,
        "target_id": (target_id or tid)[:64],
        "user_agent": (user_agent or ctx.user_agent or "")[:255] or None,
    }


def record_event(
    conn: Connection,
    *,
    action: str,
    subject_id: str,
    actor_id: str | None = None,
    ip: str | None = None,
    trace_id: str | None = None,
    details: dict[str, Any] | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    user_agent: str | None = None,
) -> None:
    """``subject_id``: whom the event is about (a user, or an email hash). The target is
    ``target_type``/``target_id`` when given, else the conversation or session named in
    ``details``, else the subject."""
    record_events(
        conn,
        [
            event_row(
                action=action,
                subject_id=subject_id,
                actor_id=actor_id,
                ip=ip,
                trace_id=trace_id,
                details=details,
                target_type=target_type,
                target_id=target_id,
                user_agent=user_agent,
            )
        ],
    )


def record_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert rows made by :func:`event_row`, in order (one statement for all of them)."""
    conn.execute(audit_events.insert(), rows)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    target_type: str | None = None
    subject: str | None = None  # actor or subject: everything about one user (export)
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def list_events(
    conn: Connection, f: AuditFilter, *, after_id: int = 0, limit: int = 1000
) -> list[Any]:
    """One page of events matching ``f`` with ``id > after_id``, in id (time) order."""
    c = audit_events.c
    q = sa.select(audit_events).where(c.id > after_id)
    if f.actor:
        q = q.where(c.actor_id == f.actor)
    if f.action:
        q = q.where(c.action == f.action)
    if f.target:
        q = q.where(c.target_id == f.target)
    if f.target_type:
        q = q.where(c.target_type == f.target_type)
    if f.subject:
        q = q.where(sa.or_(c.subject_id == f.subject, c.actor_id == f.subject))
    if f.since:
        q = q.where(c.at >= f.since)
    if f.until:
        q = q.where(c.at < f.until)
    return list(conn.execute(q.order_by(c.id).limit(limit)).all())


def _iso(t: dt.datetime) -> str:
    return t.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def event_json(row: Any) -> dict[str, Any]:
    """Contract section 7: ``{id, action, actorId, targetType, targetId, ip, userAgent,
    traceId, createdAt}``."""
    return {
        "id": str(row.id),
        "action": row.action,
        "actorId": row.actor_id,
        "targetType": row.target_type or "user",
        "targetId": row.target_id or row.subject_id,
        "ip": row.ip,
        "userAgent": row.user_agent,
        "traceId": row.trace_id,
        "createdAt": _iso(row.at),
    }


def pseudonymise_user(conn: Connection, user_id: str) -> int:
    """A purged user's events stay (365 days) under a pseudonym, without ip or user agent.
    Each statement goes through an index (subject, actor): no scan of the whole trail."""
    c = audit_events.c
    alias = pseudonym(user_id)
    conn.execute(
        audit_events.update()
        .where(c.subject_id == user_id, c.target_id == user_id)
        .values(target_id=alias)
    )
    n = conn.execute(
        audit_events.update()
        .where(c.subject_id == user_id)
        .values(subject_id=alias, ip=None, user_agent=None)
    ).rowcount
    n += conn.execute(
        audit_events.update()
        .where(c.actor_id == user_id)
        .values(actor_id=alias, ip=None, user_agent=None)
    ).rowcount
    return n
