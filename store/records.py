"""Plain records the repositories return (no SQLAlchemy rows leak out)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Self

__all__ = [
    "ConversationRecord",
    "MessageRecord",
    "SessionRecord",
    "UserKind",
    "UserRecord",
    "UserRole",
]


class UserKind(StrEnum):
    """`users.kind` (contract section 1): every actor is a user row."""

    REGISTERED = "registered"
    GUEST = "guest"


class UserRole(StrEnum):
    """`users.role`: admins may read audit data, never conversations."""

    USER = "user"
    ADMIN = "admin"


class _FromRow:
    """Build a record from a SQLAlchemy row holding (at least) its fields, and back."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: Any) -> Self:
        m = row._mapping
        return cls(**{f.name: m[f.name] for f in fields(cls)})  # type: ignore[arg-type]

    def as_row(self) -> dict[str, Any]:
        """Its fields as insert parameters (a shallow copy: ``dataclasses.asdict`` would
        deep-copy every value, and cost more than the insert)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UserRecord(_FromRow):
    id: str
    kind: str
    role: str
    email: str | None
    password_hash: str | None
    display_name: str | None
    created_at: dt.datetime
    last_active_at: dt.datetime
    deleted_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SessionRecord(_FromRow):
    id: str
    user_id: str
    refresh_hash: str
    rotation_counter: int
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    revoked_reason: str | None
    user_agent: str | None
    ip: str | None


@dataclass(frozen=True, slots=True)
class ConversationRecord(_FromRow):
    id: str
    user_id: str
    title: str
    last_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class MessageRecord(_FromRow):
    id: str
    conversation_id: str
    user_id: str
    seq: int
    role: str
    content: str
    status: str
    finish_reason: str | None
    client_message_id: str | None
    parent_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    chunk_count: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
