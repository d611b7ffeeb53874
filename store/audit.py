"""Audit trail: append-only events (who, what, when, from where). Never PII in clear."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.engine import Connection

from store.db import utcnow
from store.schema import audit_events

__all__ = ["email_subject", "record_event"]


def email_subject(email: str) -> str:
    """Subject id for an event about an email that has no user (e.g. a failed login)."""
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]


def record_event(
    conn: Connection,
    *,
    action: str,
    subject_id: str,
    actor_id: str | None = None,
    ip: str | None = None,
    trace_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        audit_events.insert().values(
            at=utcnow(),
            action=action,
            subject_id=subject_id,
            actor_id=actor_id,
            ip=ip,
            trace_id=trace_id,
            details=json.dumps(details, sort_keys=True) if details else None,
        )
    )
