"""One error vocabulary for REST and WebSocket: errors as values, turned into a body in one place.

The WebSocket's codes are ``protocol.errors.ErrorCode`` (the contract's list,
with their class and retryability in ``protocol.errors.ERRORS``). REST uses the
same codes where they apply, plus a few of its own (:class:`RestCode`). Every
code REST may answer has one row in :data:`REST`: its HTTP status, class and
whether a retry may succeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from protocol.errors import ERRORS, ErrorClass, ErrorCode, ProtocolError

__all__ = ["REST", "ApiError", "RestCode", "RestSpec", "error_body", "retry_after_header"]


class RestCode(StrEnum):
    """Codes only REST answers (the WebSocket has no use for them)."""

    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    TOKEN_REUSED = "TOKEN_REUSED"  # noqa: S105 (an error code, not a secret)
    FORBIDDEN = "FORBIDDEN"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    EMAIL_TAKEN = "EMAIL_TAKEN"
    CONFLICT = "CONFLICT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RestSpec:
    status: int
    cls: ErrorClass
    retryable: bool


def _contract(code: ErrorCode, status: int) -> tuple[str, RestSpec]:
    spec = ERRORS[code]
    return code.value, RestSpec(status, spec.cls, spec.retryable)


_V, _A, _S = ErrorClass.VALIDATION, ErrorClass.AUTH, ErrorClass.SERVER

REST: Mapping[str, RestSpec] = MappingProxyType(
    dict(
        [
            _contract(ErrorCode.VALIDATION_FAILED, 400),
            _contract(ErrorCode.PAYLOAD_TOO_LARGE, 413),
            _contract(ErrorCode.AUTH_INVALID, 401),
            _contract(ErrorCode.AUTH_EXPIRED, 401),
            _contract(ErrorCode.NOT_FOUND, 404),
            _contract(ErrorCode.RATE_LIMITED, 429),
            _contract(ErrorCode.SERVER_ERROR, 500),
            _contract(ErrorCode.SERVER_DRAINING, 503),
            (RestCode.INVALID_CREDENTIALS.value, RestSpec(401, _A, False)),
            (RestCode.TOKEN_REUSED.value, RestSpec(401, _A, False)),
            (RestCode.FORBIDDEN.value, RestSpec(403, _A, False)),
            (RestCode.METHOD_NOT_ALLOWED.value, RestSpec(405, _V, False)),
            (RestCode.EMAIL_TAKEN.value, RestSpec(409, _V, False)),
            (RestCode.CONFLICT.value, RestSpec(409, _V, False)),
            (RestCode.SERVICE_UNAVAILABLE.value, RestSpec(503, _S, True)),
        ]
    )
)


class ApiError(Exception):
    """An error the client should see: a code of :data:`REST`, a message, an optional
    Retry-After (seconds)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        spec = REST.get(str(code))
        if spec is None:
            raise ValueError(f"unknown error code {code}")
        self.code = str(code)
        self.message = message
        self.retry_after = retry_after
        self.status = status or spec.status
        self.retryable = spec.retryable
        self.error_class = spec.cls

    @classmethod
    def from_protocol(cls, err: ProtocolError) -> ApiError:
        retry = None if err.retry_after_ms is None else err.retry_after_ms / 1000
        return cls(err.code.value, err.message, retry_after=retry)


def retry_after_header(seconds: float) -> str:
    """``Retry-After``: whole seconds, rounded up (never sooner than the limit allows)."""
    return str(int(seconds + 0.999))


def error_body(code: str, message: str, retryable: bool, trace_id: str) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "retryable": retryable, "traceId": trace_id}
    }
