"""A live turn and the connections that follow it.

A :class:`LiveTurn` is one generation in flight on this instance: its stored
rows, its :class:`~protocol.turn.Turn` (state, and the only copy of its text),
and its :class:`Listener` s. Every frame a turn sends goes through
:meth:`LiveTurn.send` or :meth:`LiveTurn.send_delta`, to each listener's
outbox; only the connection's writer task writes to a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from protocol import outgoing
from protocol.errors import ProtocolError
from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta
from protocol.turn import Turn
from server.llm.base import ChatMessage
from store.records import MessageRecord

__all__ = ["Listener", "LiveTurn", "OutboxLike", "Upstream", "stored_chunks", "stored_done"]


class OutboxLike(Protocol):
    """A connection's outbound queue (``server.ws.outbox.Outbox``); pushing never blocks."""

    def push_frame(self, frame: OutboundFrame) -> None: ...

    def push_stream(
        self, delta: StreamDelta, reply: ReplyTo, t0: float | None = None, gap: float = 1.0
    ) -> None: ...


class Upstream(Protocol):
    """The model, behind its timeouts, retries and breaker (``ResilientUpstream``)."""

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Any:
        """An async context manager of a ``server.llm.resilience.Call``: the turn runner
        reads it with ``await call.drive(on_event)``."""
        ...

    def unavailable_for(self) -> float:
        """Seconds the upstream is being skipped (breaker open); 0 when calls go through."""
        ...


def stored_chunks(m: MessageRecord) -> int:
    """How many chunks a stored message counts (one at least when it has text)."""
    return max(m.chunk_count, 1) if m.content else 0


def stored_done(reply: ReplyTo, m: MessageRecord) -> OutboundFrame:
    """The ``chat.done`` of a stored, finished message."""
    return outgoing.chat_done(
        reply,
        conversation_id=m.conversation_id,
        message_id=m.id,
        seq=m.seq,
        status=m.status,
        finish_reason=m.finish_reason,
        chunks=stored_chunks(m),
        output_tokens=m.completion_tokens or 0,
        input_tokens=m.prompt_tokens,
    )


@dataclass(eq=False)
class Listener:
    """A connection that receives a turn's frames, and whom they answer."""

    outbox: OutboxLike
    reply: ReplyTo

    def send(self, frame: OutboundFrame) -> None:
        self.outbox.push_frame(frame)


@dataclass(eq=False)
class LiveTurn:
    conversation_id: str
    user_id: str
    client_message_id: str
    user_message: MessageRecord
    assistant: MessageRecord
    history: list[tuple[str, str]]
    received_at: float
    turn: Turn
    listeners: list[Listener] = field(default_factory=list)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    cancel_requested: bool = False
    usage_in: int | None = None
    error: ProtocolError | None = None
    saved_chunks: int = 0
    dup_key: str = ""
    followed: bool = False  # someone on another instance follows it (server/turns/relay.py)
    last_delta_at: float = 0.0
    gap: float = 1.0  # smoothed seconds between deltas (the writers' coalescing reads it)

    @property
    def message_id(self) -> str:
        return self.assistant.id

    @property
    def seq(self) -> int:
        return self.assistant.seq

    @property
    def is_live(self) -> bool:
        return not self.finished.is_set()

    def attach(self, listener: Listener) -> None:
        """Send this turn's frames to a connection; one listener per connection (the newest
        request's ids win), so resuming twice never doubles a frame."""
        self.detach(listener.outbox)
        self.listeners.append(listener)

    def detach(self, outbox: OutboxLike) -> None:
        self.listeners = [lst for lst in self.listeners if lst.outbox is not outbox]

    def cancel(self) -> None:
        """chat.cancel or a deleted conversation: the turn ends ``cancelled``."""
        self.cancel_requested = True
        self.cancel_scope.cancel()

    # -- frames --------------------------------------------------------------------

    def delta(self, chunk: int, text: str) -> StreamDelta:
        return StreamDelta(self.conversation_id, self.message_id, self.seq, chunk, text)

    def send(self, build: Callable[[ReplyTo], OutboundFrame]) -> None:
        """One frame to every listener, built with each one's reply ids."""
        for lst in self.listeners:
            lst.outbox.push_frame(build(lst.reply))

    def send_delta(self, delta: StreamDelta, t0: float | None = None) -> None:
        for lst in self.listeners:
            lst.outbox.push_stream(delta, lst.reply, t0, self.gap)

    def ack(self, listener: Listener, *, duplicate: bool) -> None:
        listener.send(
            outgoing.chat_ack(
                listener.reply,
                conversation_id=self.conversation_id,
                message_id=self.client_message_id,
                user_seq=self.user_message.seq,
                assistant_message_id=self.message_id,
                assistant_seq=self.seq,
                duplicate=duplicate,
            )
        )

    def done_frame(self, reply: ReplyTo) -> OutboundFrame:
        turn = self.turn
        return outgoing.chat_done(
            reply,
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            seq=self.seq,
            status=turn.message_status.value,
            finish_reason=turn.finish_reason,
            chunks=turn.chunks,
            output_tokens=turn.output_tokens,
            input_tokens=self.usage_in,
        )
