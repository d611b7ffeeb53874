"""The WebSocket frame vocabulary: frame types and the `data` model of each.

Over 400 lines: the whole vocabulary of the wire on one page (every client and server
model), as the contract lists it; splitting it would scatter one table.

Field names are the wire's camelCase names, used as attribute names too
(`send.conversationId`), so a model reads exactly like the frame it checks.

Client models (`ChatSend`, `ChatCancel`, `ChatResume`, `AuthRefresh`, `Ping`)
are strict: unknown fields are refused and no type is coerced (`"5"` is not
an int, `true` is not an int, `1.0` is not an int). UUIDs are hyphenated
8-4-4-4-12 hex strings, either case on input, kept lower-case.

Server models document and check what the server sends; the hot path never
builds them (see `protocol.codec.encode_server_frame`), tests validate the
encoded text against them (`protocol.codec.validate_server_frame`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from protocol.errors import ERRORS, ErrorClass, ErrorCode

__all__ = [
    "CLIENT_MODELS",
    "DONE_STATUSES",
    "MAX_ACCESS_TOKEN_CHARS",
    "MAX_CONTENT_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "MAX_SEQ",
    "SERVER_MODELS",
    "AuthRefresh",
    "ChatAck",
    "ChatCancel",
    "ChatDone",
    "ChatMessage",
    "ChatResume",
    "ChatResumed",
    "ChatSend",
    "ChatStream",
    "ClientData",
    "ClientType",
    "DoneStatus",
    "ErrorData",
    "FinishReason",
    "Limits",
    "Message",
    "MessageStatus",
    "Ping",
    "Pong",
    "Role",
    "ServerDraining",
    "ServerType",
    "SessionReady",
    "Usage",
    "UuidStr",
    "format_timestamp",
    "is_trace_id",
    "is_uuid",
]

MAX_CONTENT_CHARS = 8000
"""`chat.send` content, in characters (Unicode code points)."""
MAX_REQUEST_ID_CHARS = 128
MAX_ACCESS_TOKEN_CHARS = 8192
MAX_SEQ = 2**53 - 1
"""Largest seq/chunk/count on the wire: the largest integer a browser holds exactly."""


class ClientType(StrEnum):
    CHAT_SEND = "chat.send"
    CHAT_CANCEL = "chat.cancel"
    CHAT_RESUME = "chat.resume"
    AUTH_REFRESH = "auth.refresh"
    PING = "ping"


class ServerType(StrEnum):
    SESSION_READY = "session.ready"
    CHAT_ACK = "chat.ack"
    CHAT_STREAM = "chat.stream"
    CHAT_DONE = "chat.done"
    CHAT_MESSAGE = "chat.message"
    CHAT_RESUMED = "chat.resumed"
    ERROR = "error"
    SERVER_DRAINING = "server.draining"
    PONG = "pong"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class MessageStatus(StrEnum):
    """A stored message's status. `streaming` only while its turn is in flight."""

    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TRUNCATED = "truncated"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class DoneStatus(StrEnum):
    """The `status` of `chat.done`: every message status but `streaming`."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TRUNCATED = "truncated"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


DONE_STATUSES: frozenset[str] = frozenset(s.value for s in DoneStatus)


class FinishReason(StrEnum):
    """Well-known `finishReason` values (the field is a free string, or null)."""

    STOP = "stop"  # completed: the model ended its answer
    LENGTH = "length"  # truncated: 4,096 output tokens or 64 KiB
    CANCELLED = "cancelled"  # cancelled: chat.cancel
    ERROR = "error"  # failed: upstream error or timeout after tokens were sent
    INTERRUPTED = "interrupted"  # interrupted: the streaming instance died or drained


# -- reusable field types ---------------------------------------------------

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_TRACE_RE = re.compile(r"[0-9a-f]{32}")
_ZERO_TRACE = "0" * 32
_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def is_uuid(value: object) -> bool:
    """A hyphenated 8-4-4-4-12 hex string (either case)."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_trace_id(value: object) -> bool:
    """A W3C trace-id: 32 lower-case hex digits, not all zero."""
    return (
        isinstance(value, str) and _TRACE_RE.fullmatch(value) is not None and value != _ZERO_TRACE
    )


def _check_uuid(value: str) -> str:
    if _UUID_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "uuid_format", "must be a UUID string (8-4-4-4-12 hexadecimal digits)"
        )
    return value.lower()


def _check_timestamp(value: str) -> str:
    if _TIMESTAMP_RE.fullmatch(value) is None:
        raise PydanticCustomError(
            "timestamp_format", "must be an RFC 3339 UTC time like 2024-05-01T12:00:00.000Z"
        )
    return value


UuidStr = Annotated[str, AfterValidator(_check_uuid)]
Timestamp = Annotated[str, AfterValidator(_check_timestamp)]
Seq = Annotated[int, Field(ge=1, le=MAX_SEQ)]
Count = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Chunk = Annotated[int, Field(ge=0, le=MAX_SEQ)]
LastChunk = Annotated[int, Field(ge=-1, le=MAX_SEQ)]
ShortId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def format_timestamp(moment: datetime) -> str:
    """The wire's time format: UTC, millisecond precision, `Z` suffix.

    A naive `datetime` is taken to be UTC already.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- client to server ---------------------------------------------------------


class _ClientModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ChatSend(_ClientModel):
    """`content`: 1 to `MAX_CONTENT_CHARS` characters, or to the validation context's
    `max_content_chars` (the server's setting) when one is given."""

    conversationId: UuidStr
    messageId: UuidStr
    content: Annotated[str, StringConstraints(min_length=1)]

    @field_validator("content")
    @classmethod
    def _content_limit(cls, value: str, info: ValidationInfo) -> str:
        ctx = info.context or {}
        limit = ctx.get("max_content_chars", MAX_CONTENT_CHARS)
        if len(value) > limit:
            raise PydanticCustomError(
                "string_too_long", "String should have at most {max} characters", {"max": limit}
            )
        return value


class ChatCancel(_ClientModel):
    conversationId: UuidStr
    messageId: UuidStr


class ChatResume(_ClientModel):
    """`lastChunk` absent, null or -1 all mean: no chunk of a message in flight."""

    conversationId: UuidStr
    lastMessageSeq: Count
    lastChunk: LastChunk | None = None


class AuthRefresh(_ClientModel):
    accessToken: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ACCESS_TOKEN_CHARS)]


class Ping(_ClientModel):
    """`data` absent, null or `{}`."""


ClientData = ChatSend | ChatCancel | ChatResume | AuthRefresh | Ping

CLIENT_MODELS: Mapping[ClientType, type[ClientData]] = MappingProxyType(
    {
        ClientType.CHAT_SEND: ChatSend,
        ClientType.CHAT_CANCEL: ChatCancel,
        ClientType.CHAT_RESUME: ChatResume,
        ClientType.AUTH_REFRESH: AuthRefresh,
        ClientType.PING: Ping,
    }
)


# -- server to client -----------------------------------------------------------


class _ServerModel(BaseModel):
    """Lax in Python (REST code may build them from rows and plain strings);
    `validate_server_frame` checks encoded frames in strict JSON mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(BaseModel):
    """`session.ready` limits. The named ones are always sent; more may follow."""

    model_config = ConfigDict(extra="allow", frozen=True)

    maxFrameBytes: Count
    maxContentChars: Count
    maxConcurrentTurns: Count
    chatSendPerMinute: Count


class SessionReady(_ServerModel):
    userId: ShortId
    sessionId: ShortId
    connectionId: ShortId
    serverTime: Timestamp
    limits: Limits


class ChatAck(_ServerModel):
    conversationId: UuidStr
    messageId: UuidStr
    userSeq: Seq
    assistantMessageId: UuidStr
    assistantSeq: Seq
    duplicate: bool

    @model_validator(mode="after")
    def _assistant_follows_user(self) -> Self:
        if self.assistantSeq != self.userSeq + 1:
            raise ValueError("assistantSeq must be userSeq + 1")
        return self


class ChatStream(_ServerModel):
    conversationId: UuidStr
    messageId: UuidStr
    seq: Seq
    chunk: Chunk
    delta: Annotated[str, StringConstraints(min_length=1)]


class Usage(_ServerModel):
    """`outputTokens` as counted by the turn; `inputTokens` when the upstream said."""

    inputTokens: Count | None = None
    outputTokens: Count


class ChatDone(_ServerModel):
    conversationId: UuidStr
    messageId: UuidStr
    seq: Seq
    status: DoneStatus
    finishReason: Reason | None
    lastChunk: LastChunk
    usage: Usage

    @model_validator(mode="after")
    def _truncated_means_length(self) -> Self:
        if self.status is DoneStatus.TRUNCATED and self.finishReason != FinishReason.LENGTH:
            raise ValueError("a truncated message has finishReason 'length'")
        return self


class Message(_ServerModel):
    """A stored message, as in REST history and in `chat.message`."""

    id: UuidStr
    conversationId: UuidStr
    seq: Seq
    role: Role
    content: str
    status: MessageStatus
    finishReason: Reason | None
    createdAt: Timestamp


class ChatMessage(Message):
    """`chat.message`: its data is a whole `Message`."""


class ChatResumed(_ServerModel):
    conversationId: UuidStr
    replayed: Count
    live: bool
    reset: bool

    @model_validator(mode="after")
    def _reset_replays_nothing(self) -> Self:
        if self.reset and self.replayed:
            raise ValueError("a reset replays nothing")
        return self


class ErrorData(_ServerModel):
    code: ErrorCode
    error_class: ErrorClass = Field(alias="class")
    message: str
    retryable: bool
    retryAfterMs: Count | None = None

    @model_validator(mode="after")
    def _matches_table(self) -> Self:
        spec = ERRORS[self.code]
        if self.error_class is not spec.cls or self.retryable is not spec.retryable:
            raise ValueError(f"class/retryable do not match the table for {self.code.value}")
        return self


class ServerDraining(_ServerModel):
    reconnectAfterMs: Count


class Pong(_ServerModel):
    """Always sent as `data: {}`."""


SERVER_MODELS: Mapping[ServerType, type[BaseModel]] = MappingProxyType(
    {
        ServerType.SESSION_READY: SessionReady,
        ServerType.CHAT_ACK: ChatAck,
        ServerType.CHAT_STREAM: ChatStream,
        ServerType.CHAT_DONE: ChatDone,
        ServerType.CHAT_MESSAGE: ChatMessage,
        ServerType.CHAT_RESUMED: ChatResumed,
        ServerType.ERROR: ErrorData,
        ServerType.SERVER_DRAINING: ServerDraining,
        ServerType.PONG: Pong,
    }
)
