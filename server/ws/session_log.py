"""The log context and access line of a WebSocket session.

:func:`started` binds ``connectionId`` and ``userId`` (and the upgrade's ``traceId``) for
every event the connection's tasks log; :func:`frame` binds each client frame's
``requestId`` and ``traceId`` while the reader handles it; :func:`ended` writes one
``ws_session`` line: close code, duration, frames' characters in and out; :func:`refused`
one ``ws_refused`` line for an upgrade refused before it became a session.
"""

from __future__ import annotations

import re
import time

import structlog

from server.logging import get_logger
from server.ws.state import Connection

__all__ = ["ended", "frame", "refused", "started"]

log = get_logger("parley.access")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def started(conn: Connection, traceparent: str | None) -> float:
    """Bind the session's keys; the upgrade's ``traceparent`` header becomes the trace of
    the frames (and so the turns) that carry no ``traceId`` of their own."""
    m = _TRACEPARENT.match((traceparent or "").strip().lower())
    if m is not None and m.group(1) != "0" * 32:
        conn.trace_id = m.group(1)
    structlog.contextvars.bind_contextvars(connectionId=conn.id, userId=conn.user_id)
    return time.perf_counter()


def frame(request_id: str | None, trace_id: str) -> None:
    structlog.contextvars.bind_contextvars(requestId=request_id, traceId=trace_id)


def ended(conn: Connection, started_at: float) -> None:
    structlog.contextvars.unbind_contextvars("requestId", "traceId")
    log.info(
        "ws_session",
        route="/ws",
        closeCode=conn.close_code or 1000,
        closeReason=conn.close_reason or None,
        durationMs=round((time.perf_counter() - started_at) * 1000, 2),
        charsIn=conn.chars_in,
        charsOut=conn.chars_out,
    )


def refused(*, status: int | None = None, close_code: int | None = None, reason: str) -> None:
    """One access line for an upgrade that never became a session: refused over HTTP
    (``status``) or accepted and closed at once (``close_code``), and why."""
    log.info("ws_refused", route="/ws", status=status, closeCode=close_code, reason=reason)
