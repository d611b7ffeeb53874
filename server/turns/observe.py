"""A turn's log context and spans.

The turn task binds ``traceId`` (its ``chat.send`` frame's), ``requestId``, ``userId``,
``conversationId`` and ``messageId`` for everything it logs. With tracing on, a
``chat.turn`` span runs from the ``chat.send`` received to the end stored, with events
``dispatched`` (upstream request sent) and ``first_token``, and a child span
``llm.upstream`` for the upstream call; its trace id is the frame's ``traceId``.
"""

from __future__ import annotations

import structlog

from server import tracing
from server.logging import get_logger
from server.turns.live import LiveTurn

__all__ = ["TurnObserver"]

log = get_logger("parley.turns")


class TurnObserver:
    def __init__(self, live: LiveTurn) -> None:
        reply = live.listeners[0].reply if live.listeners else None
        self.trace_id = reply.trace_id if reply is not None else None
        # the task may have inherited a connection's keys (whoever started the start queue)
        structlog.contextvars.unbind_contextvars("connectionId")
        structlog.contextvars.bind_contextvars(
            traceId=self.trace_id,
            requestId=reply.request_id if reply is not None else None,
            userId=live.user_id,
            conversationId=live.conversation_id,
            messageId=live.message_id,
        )
        self.span = tracing.start_span(
            "chat.turn",
            trace_id=self.trace_id,
            start_ns=tracing.perf_to_ns(live.received_at),
            attributes={"parley.conversation_id": live.conversation_id},
        )
        self.upstream_span = None
        self.first = False

    def dispatched(self) -> None:
        if self.span is None:
            return
        self.span.add_event("dispatched")
        self.upstream_span = tracing.start_span("llm.upstream", parent=self.span)

    def token(self) -> None:
        if self.span is not None and not self.first:
            self.first = True
            self.span.add_event("first_token")
            if self.upstream_span is not None:
                self.upstream_span.add_event("first_token")

    def upstream_done(self, error: str | None = None) -> None:
        tracing.end_span(self.upstream_span, error=error)
        self.upstream_span = None

    def done(self, status: str, chunks: int, error: str | None = None) -> None:
        """The end is stored (or given up): one ``turn_done`` line, the spans end."""
        log.info("turn_done", status=status, chunks=chunks, error=error)
        if self.span is None:
            return
        self.upstream_done(error)
        tracing.end_span(
            self.span, error=error, **{"parley.status": status, "parley.chunks": chunks}
        )
        self.span = None
