"""WebSocket error codes, their classes, and the error value raised by `protocol`.

Every error the server reports on the socket is one of the `ErrorCode`
members (CONTRACT section 4). `ERRORS` fixes, for each code, its class, whether
the client may retry the same request, and the default human message.

`ProtocolError` is the value that travels from where an error is known to the
one place that turns it into an `error` frame (`ProtocolError.to_data`) or a
close (`ProtocolError.close_code`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from protocol.close_codes import CloseCode

__all__ = [
    "AUTH_CLOSE_CODES",
    "ERRORS",
    "ErrorClass",
    "ErrorCode",
    "ErrorSpec",
    "ProtocolError",
]


class ErrorClass(StrEnum):
    """The coarse family of an error (the `class` field of an `error` frame)."""

    VALIDATION = "VALIDATION"
    AUTH = "AUTH"
    RLIMIT = "RLIMIT"
    UPSTREAM = "UPSTREAM"
    SERVER = "SERVER"


class ErrorCode(StrEnum):
    """Every error code the WebSocket may send (CONTRACT section 4), nothing else."""

    VALIDATION_FAILED = "VALIDATION_FAILED"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    AUTH_EXPIRED = "AUTH_EXPIRED"
    AUTH_INVALID = "AUTH_INVALID"
    NOT_FOUND = "NOT_FOUND"
    CONVERSATION_BUSY = "CONVERSATION_BUSY"
    DUPLICATE_CONTENT = "DUPLICATE_CONTENT"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    REPLAY_EXPIRED = "REPLAY_EXPIRED"
    SERVER_ERROR = "SERVER_ERROR"
    SERVER_DRAINING = "SERVER_DRAINING"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """What a code means: its class, whether a retry of the same request may
    succeed, the message used when none is given, and why it is so."""

    cls: ErrorClass
    retryable: bool
    default_message: str
    doc: str


_V, _A, _R, _U, _S = (
    ErrorClass.VALIDATION,
    ErrorClass.AUTH,
    ErrorClass.RLIMIT,
    ErrorClass.UPSTREAM,
    ErrorClass.SERVER,
)

ERRORS: Mapping[ErrorCode, ErrorSpec] = MappingProxyType(
    {
        ErrorCode.VALIDATION_FAILED: ErrorSpec(
            _V,
            False,
            "the frame does not match the schema",
            "Bad JSON, not an object, missing, extra or mistyped field. The same "
            "frame fails again: not retryable.",
        ),
        ErrorCode.UNKNOWN_TYPE: ErrorSpec(
            _V,
            False,
            "unknown frame type",
            "`type` is not a client-to-server type (server-to-client types sent by "
            "a client included). Not retryable.",
        ),
        ErrorCode.PAYLOAD_TOO_LARGE: ErrorSpec(
            _V,
            False,
            "the payload is too large",
            "`chat.send` content over 8,000 characters (error frame), or a frame "
            "over 64 KiB (the connection is closed 1009). Not retryable.",
        ),
        ErrorCode.AUTH_EXPIRED: ErrorSpec(
            _A,
            False,
            "the access token has expired",
            "Not retryable as is: the client must refresh its token first "
            "(`auth.refresh`, or close 4001 then reconnect with a fresh token).",
        ),
        ErrorCode.AUTH_INVALID: ErrorSpec(
            _A,
            False,
            "the access token is invalid or the session was revoked",
            "Bad signature, unknown key, another user's token in `auth.refresh`, "
            "revoked session. Not retryable: the user must sign in again.",
        ),
        ErrorCode.NOT_FOUND: ErrorSpec(
            _V,
            False,
            "not found",
            "The conversation or message does not exist or is not the caller's "
            "(both answer alike). Class VALIDATION: the request names something "
            "that is not there. Not retryable.",
        ),
        ErrorCode.CONVERSATION_BUSY: ErrorSpec(
            _R,
            True,
            "a reply is already being generated in this conversation",
            "One turn in flight per conversation (also: over 3 streaming turns for "
            "the user). Class RLIMIT: a concurrency limit. Retryable once the turn "
            "in flight is done.",
        ),
        ErrorCode.DUPLICATE_CONTENT: ErrorSpec(
            _V,
            False,
            "the same message was just sent in this conversation",
            "Same content, same user, same conversation within 10 s under a new "
            "messageId. Class VALIDATION: the request itself is refused. Not "
            "retryable (retrying is exactly what it guards against).",
        ),
        ErrorCode.IDEMPOTENCY_CONFLICT: ErrorSpec(
            _V,
            False,
            "this messageId was already used with different content",
            "Same messageId, different content. Not retryable: a new messageId is needed.",
        ),
        ErrorCode.RATE_LIMITED: ErrorSpec(
            _R,
            True,
            "too many requests",
            "A rate limit (e.g. 20 chat.send per minute). Retryable after "
            "`retryAfterMs`, which is set whenever known.",
        ),
        ErrorCode.UPSTREAM_TIMEOUT: ErrorSpec(
            _U,
            True,
            "the language model did not answer in time",
            "No first token within 20 s (after 2 retries), a gap over 30 s between "
            "tokens, or over 180 s in all. Always after `chat.ack` (the ack is sent "
            "before the upstream is called): the user message and a `failed` assistant "
            "message (partial text kept) are stored, and `chat.done` `status: failed` "
            "follows. Retryable under a new messageId (the same one replays the "
            "failed answer).",
        ),
        ErrorCode.UPSTREAM_ERROR: ErrorSpec(
            _U,
            True,
            "the language model failed",
            "The upstream failed, before or after the first token. Always after "
            "`chat.ack`: the user message and a `failed` assistant message (partial "
            "text kept) are stored, and `chat.done` `status: failed` follows. "
            "Retryable under a new messageId (the same one replays the failed answer).",
        ),
        ErrorCode.UPSTREAM_UNAVAILABLE: ErrorSpec(
            _U,
            True,
            "the language model is unavailable",
            "Circuit open after 5 straight failures (skipped for 30 s, fail fast). "
            "Retryable, after `retryAfterMs` when set.",
        ),
        ErrorCode.REPLAY_EXPIRED: ErrorSpec(
            _V,
            False,
            "this message is no longer retained",
            "A duplicate chat.send whose message was deleted by retention: nothing "
            "is regenerated. Not retryable.",
        ),
        ErrorCode.SERVER_ERROR: ErrorSpec(
            _S,
            True,
            "internal server error",
            "An unexpected fault of the server. Before chat.ack nothing was stored; after it "
            "the turn ended failed, or its end could not be stored yet (resume later). "
            "Retryable.",
        ),
        ErrorCode.SERVER_DRAINING: ErrorSpec(
            _S,
            True,
            "the server is shutting down",
            "New work refused while draining. Retryable on a new connection "
            "(after `server.draining`'s reconnectAfterMs).",
        ),
    }
)


AUTH_CLOSE_CODES: Mapping[ErrorCode, CloseCode] = MappingProxyType(
    {
        ErrorCode.AUTH_EXPIRED: CloseCode.TOKEN_EXPIRED,  # refresh, then reconnect
        ErrorCode.AUTH_INVALID: CloseCode.TOKEN_INVALID,  # sign in again
    }
)
"""How a connection closes when its token fails (at the upgrade, or on a later frame)."""


class ProtocolError(Exception):
    """An error with a contract code, raised where it is known.

    `request_id` and `trace_id` are echoed on the `error` frame when known.
    `close_code`, when set, tells the server to close the connection with that
    code instead of answering with an `error` frame (e.g. a frame over 64 KiB:
    1009).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        retry_after_ms: int | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        close_code: CloseCode | None = None,
    ) -> None:
        self.code: ErrorCode = ErrorCode(code)
        self.message: str = message if message is not None else ERRORS[self.code].default_message
        if retry_after_ms is not None and retry_after_ms < 0:
            raise ValueError("retry_after_ms must be >= 0")
        self.retry_after_ms: int | None = retry_after_ms
        self.request_id: str | None = request_id
        self.trace_id: str | None = trace_id
        self.close_code: CloseCode | None = close_code
        super().__init__(self.code.value, self.message)

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.code]

    @property
    def error_class(self) -> ErrorClass:
        return ERRORS[self.code].cls

    @property
    def retryable(self) -> bool:
        return ERRORS[self.code].retryable

    def to_data(self) -> dict[str, Any]:
        """The `data` of the `error` frame: `{code, class, message, retryable,
        retryAfterMs?}` (`retryAfterMs` only when known)."""
        spec = ERRORS[self.code]
        data: dict[str, Any] = {
            "code": self.code.value,
            "class": spec.cls.value,
            "message": self.message,
            "retryable": spec.retryable,
        }
        if self.retry_after_ms is not None:
            data["retryAfterMs"] = self.retry_after_ms
        return data

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProtocolError({self.code.value!r}, {self.message!r}, "
            f"retry_after_ms={self.retry_after_ms!r}, request_id={self.request_id!r})"
        )
