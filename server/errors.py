"""Errors as values: one exception type with a contract code, turned into a body in one place."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body"]

# code -> (HTTP status, retryable)
REST_CODES: dict[str, tuple[int, bool]] = {
    "VALIDATION_FAILED": (400, False),
    "PAYLOAD_TOO_LARGE": (413, False),
    "AUTH_INVALID": (401, False),
    "AUTH_EXPIRED": (401, False),
    "INVALID_CREDENTIALS": (401, False),
    "TOKEN_REUSED": (401, False),
    "FORBIDDEN": (403, False),
    "NOT_FOUND": (404, False),
    "METHOD_NOT_ALLOWED": (405, False),
    "EMAIL_TAKEN": (409, False),
    "CONFLICT": (409, False),
    "RATE_LIMITED": (429, True),
    "SERVER_ERROR": (500, True),
    "SERVER_DRAINING": (503, True),
    "SERVICE_UNAVAILABLE": (503, True),
}


class ApiError(Exception):
    """An error the client should see: contract code, message, optional Retry-After."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        if code not in REST_CODES:
            raise ValueError(f"unknown error code {code}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status or REST_CODES[code][0]
        self.retryable = REST_CODES[code][1]


def error_body(code: str, message: str, retryable: bool, trace_id: str) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "retryable": retryable, "traceId": trace_id}
    }
