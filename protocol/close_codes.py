"""WebSocket close codes (CONTRACT section 4, "Close codes").

`CLOSE_CODES` says, for each code the server sends, whether the client should
reconnect and which reason string goes with it. Reasons are the upper-case
name of the matching error code where there is one (`AUTH_INVALID` for 4500,
`AUTH_EXPIRED` for 4001, ...), otherwise a name in the same style. Every reason
fits the 123-byte limit of a close frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

__all__ = [
    "CLOSE_CODES",
    "MAX_CLOSE_REASON_BYTES",
    "CloseCode",
    "CloseSpec",
    "close_reason",
    "should_reconnect",
    "truncate_reason",
]

MAX_CLOSE_REASON_BYTES = 123
"""A close frame's payload is at most 125 bytes, two of which are the code."""


class CloseCode(IntEnum):
    """Every close code the server sends."""

    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012
    DRAINING = 1012  # alias of RESTART
    TRY_AGAIN_LATER = 1013
    INSTANCE_FULL = 1013  # alias of TRY_AGAIN_LATER
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029
    TOKEN_INVALID = 4500
    SESSION_REVOKED = 4500  # alias of TOKEN_INVALID
    TOO_MANY_CONNECTIONS = 4504
    TOO_MANY_INVALID_FRAMES = 4509


@dataclass(frozen=True, slots=True)
class CloseSpec:
    reconnect: bool
    reason: str
    doc: str


CLOSE_CODES: Mapping[CloseCode, CloseSpec] = MappingProxyType(
    {
        CloseCode.POLICY: CloseSpec(
            False, "POLICY_VIOLATION", "policy violation (e.g. a binary frame): do not reconnect"
        ),
        CloseCode.TOO_BIG: CloseSpec(
            False, "PAYLOAD_TOO_LARGE", "a frame over 64 KiB: do not reconnect"
        ),
        CloseCode.INTERNAL: CloseSpec(True, "SERVER_ERROR", "internal error: reconnect"),
        CloseCode.RESTART: CloseSpec(
            True, "SERVER_DRAINING", "draining or restarting: reconnect (another instance)"
        ),
        CloseCode.TRY_AGAIN_LATER: CloseSpec(
            True, "INSTANCE_FULL", "instance connection cap reached: reconnect later"
        ),
        CloseCode.TOKEN_EXPIRED: CloseSpec(
            True, "AUTH_EXPIRED", "access token expired: refresh it, then reconnect"
        ),
        CloseCode.SLOW_CONSUMER: CloseSpec(
            True, "SLOW_CONSUMER", "outbound queue stalled past its bound: reconnect and resume"
        ),
        CloseCode.RATE_LIMITED: CloseSpec(
            True, "RATE_LIMITED", "rate limited: reconnect after retryAfterMs"
        ),
        CloseCode.TOKEN_INVALID: CloseSpec(
            False, "AUTH_INVALID", "token invalid or session revoked: sign in again"
        ),
        CloseCode.TOO_MANY_CONNECTIONS: CloseSpec(
            False, "TOO_MANY_CONNECTIONS", "too many connections for this user: do not reconnect"
        ),
        CloseCode.TOO_MANY_INVALID_FRAMES: CloseSpec(
            False, "TOO_MANY_INVALID_FRAMES", "10 invalid frames in 60 s: do not reconnect"
        ),
    }
)

# Codes the server never sends but a client may see (RFC 6455 section 7.4.1).
_OTHER_RECONNECT: Mapping[int, bool] = MappingProxyType(
    {
        1000: False,  # normal closure
        1001: True,  # going away
        1005: True,  # no status received
        1006: True,  # abnormal closure (no close frame, e.g. Hypercorn shutdown, network)
        1014: True,  # bad gateway (proxy)
        1015: True,  # TLS handshake failure (maybe transient)
    }
)


def should_reconnect(code: int) -> bool:
    """Whether a client should reconnect after a close with `code`.

    Known server codes follow `CLOSE_CODES`. For other codes: 1001, 1005,
    1006, 1014 and 1015 reconnect, 1000 does not; an unknown 4000-4499 code
    reconnects and an unknown 4500-4999 code does not (the contract's own
    codes follow that split); anything else does not.
    """
    try:
        return CLOSE_CODES[CloseCode(code)].reconnect
    except ValueError:
        pass
    if code in _OTHER_RECONNECT:
        return _OTHER_RECONNECT[code]
    return 4000 <= code < 4500


def close_reason(code: CloseCode) -> str:
    """The default close reason for `code` (an error-code-style name)."""
    return CLOSE_CODES[CloseCode(code)].reason


def truncate_reason(reason: str) -> str:
    """`reason` cut to at most 123 UTF-8 bytes, never splitting a character."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return raw[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")
