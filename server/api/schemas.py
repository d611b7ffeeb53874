"""REST request bodies (validated strictly) and response shapes (camelCase)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, EmailStr, StringConstraints, field_validator

from protocol.frames import format_timestamp
from store.records import ConversationRecord, SessionRecord, UserRecord
from store.users import canonical_email

__all__ = [
    "Credentials",
    "LogoutBody",
    "NewConversation",
    "RefreshBody",
    "Registration",
    "RenameConversation",
    "conversation_json",
    "iso",
    "session_json",
    "user_json",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


Email = Annotated[EmailStr, StringConstraints(max_length=254)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
# One line of text: no control characters (NUL, escapes, line breaks) in a name or title.
_ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_ONE_LINE),
]
DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=_ONE_LINE),
]


class _EmailLower(Strict):
    @field_validator("email", mode="after", check_fields=False)
    @classmethod
    def _lower(cls, v: str) -> str:
        return canonical_email(v)


class Registration(_EmailLower):
    email: Email
    password: Password
    displayName: DisplayName | None = None


class Credentials(_EmailLower):
    email: Annotated[str, StringConstraints(min_length=3, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class GuestBody(Strict):
    displayName: DisplayName | None = None


class RefreshBody(Strict):
    refreshToken: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class LogoutBody(Strict):
    refreshToken: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None


class NewConversation(Strict):
    title: Title | None = None


class RenameConversation(Strict):
    title: Title


def iso(value: dt.datetime | None) -> str | None:
    """The one time format of REST and WebSocket alike (UTC, milliseconds, ``Z``)."""
    return None if value is None else format_timestamp(value)


def user_json(u: UserRecord) -> dict[str, Any]:
    return {
        "id": u.id,
        "email": u.email,
        "kind": u.kind,
        "role": u.role,
        "displayName": u.display_name,
        "createdAt": iso(u.created_at),
    }


def session_json(s: SessionRecord, *, current_sid: str | None) -> dict[str, Any]:
    return {
        "id": s.id,
        "createdAt": iso(s.created_at),
        "lastUsedAt": iso(s.last_used_at),
        "expiresAt": iso(s.expires_at),
        "userAgent": s.user_agent,
        "ip": s.ip,
        "current": s.id == current_sid,
    }


def conversation_json(c: ConversationRecord) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "createdAt": iso(c.created_at),
        "updatedAt": iso(c.updated_at),
        "lastSeq": c.last_seq,
    }
