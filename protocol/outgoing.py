"""The server's side of the wire: one builder per server frame type.

As wsproto's ``send(event) -> bytes``: the server hands typed values in and
gets the encoded frame out; it never writes a frame dict itself. Each builder
returns an :class:`OutboundFrame` (the text to write and its ``type``, for
metrics). ``chat.stream`` frames are built by the outbound queue
(`protocol.coalesce`) from :class:`StreamDelta` values, because consecutive
deltas merge while they wait.

:func:`message_data` is the one ``Message`` shape, used by REST history and by
the ``chat.message`` frame alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from protocol.codec import encode_server_frame, new_trace_id
from protocol.errors import ProtocolError
from protocol.frames import ServerType, format_timestamp

__all__ = [
    "OutboundFrame",
    "ReplyTo",
    "StoredMessage",
    "StreamDelta",
    "chat_ack",
    "chat_done",
    "chat_message",
    "chat_resumed",
    "chat_stream",
    "error",
    "message_data",
    "pong",
    "server_draining",
    "session_ready",
]


class OutboundFrame(NamedTuple):
    """A frame ready to write, and its `type` (for metrics)."""

    text: str
    type: str


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Whom a frame answers: the client's ``requestId`` (None: no request) and the trace."""

    request_id: str | None
    trace_id: str

    @classmethod
    def unsolicited(cls) -> ReplyTo:
        """A frame that answers no request (``server.draining``, ``session.ready``)."""
        return cls(None, new_trace_id())


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One numbered piece of a message's text (``chunk`` counts from 0), or several merged:
    then ``chunk`` is the number of the last piece ``text`` holds."""

    conversation_id: str
    message_id: str
    seq: int
    chunk: int
    text: str


class StoredMessage(Protocol):
    """What a stored message row offers (``store.records.MessageRecord`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def conversation_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def created_at(self) -> dt.datetime: ...


def message_data(m: StoredMessage) -> dict[str, Any]:
    """A ``Message``: REST history and the WebSocket ``chat.message`` frame alike."""
    return {
        "id": m.id,
        "conversationId": m.conversation_id,
        "seq": m.seq,
        "role": m.role,
        "content": m.content,
        "status": m.status,
        "finishReason": m.finish_reason,
        "createdAt": format_timestamp(m.created_at),
    }


def _frame(type_: ServerType, data: Mapping[str, Any], reply: ReplyTo) -> OutboundFrame:
    text = encode_server_frame(type_, data, request_id=reply.request_id, trace_id=reply.trace_id)
    return OutboundFrame(text, type_.value)


def session_ready(
    reply: ReplyTo,
    *,
    user_id: str,
    session_id: str,
    connection_id: str,
    server_time: dt.datetime,
    limits: Mapping[str, int],
) -> OutboundFrame:
    return _frame(
        ServerType.SESSION_READY,
        {
            "userId": user_id,
            "sessionId": session_id,
            "connectionId": connection_id,
            "serverTime": format_timestamp(server_time),
            "limits": dict(limits),
        },
        reply,
    )


def chat_ack(
    reply: ReplyTo,
    *,
    conversation_id: str,
    message_id: str,
    user_seq: int,
    assistant_message_id: str,
    assistant_seq: int,
    duplicate: bool,
) -> OutboundFrame:
    return _frame(
        ServerType.CHAT_ACK,
        {
            "conversationId": conversation_id,
            "messageId": message_id,
            "userSeq": user_seq,
            "assistantMessageId": assistant_message_id,
            "assistantSeq": assistant_seq,
            "duplicate": duplicate,
        },
        reply,
    )


def chat_stream(reply: ReplyTo, delta: StreamDelta) -> OutboundFrame:
    return _frame(
        ServerType.CHAT_STREAM,
        {
            "conversationId": delta.conversation_id,
            "messageId": delta.message_id,
            "seq": delta.seq,
            "chunk": delta.chunk,
            "delta": delta.text,
        },
        reply,
    )


def chat_done(
    reply: ReplyTo,
    *,
    conversation_id: str,
    message_id: str,
    seq: int,
    status: str,
    finish_reason: str | None,
    chunks: int,
    output_tokens: int,
    input_tokens: int | None,
) -> OutboundFrame:
    """``chunks`` is how many chunks the message has (``lastChunk`` is one less)."""
    return _frame(
        ServerType.CHAT_DONE,
        {
            "conversationId": conversation_id,
            "messageId": message_id,
            "seq": seq,
            "status": status,
            "finishReason": finish_reason,
            "lastChunk": chunks - 1,
            "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens},
        },
        reply,
    )


def chat_message(reply: ReplyTo, message: StoredMessage) -> OutboundFrame:
    return _frame(ServerType.CHAT_MESSAGE, message_data(message), reply)


def chat_resumed(
    reply: ReplyTo, *, conversation_id: str, replayed: int, live: bool, reset: bool
) -> OutboundFrame:
    return _frame(
        ServerType.CHAT_RESUMED,
        {"conversationId": conversation_id, "replayed": replayed, "live": live, "reset": reset},
        reply,
    )


def error(err: ProtocolError, reply: ReplyTo) -> OutboundFrame:
    """The one way a ``ProtocolError`` becomes an ``error`` frame. The error's own request
    and trace ids (when it knows them) win over the reply's."""
    request_id = err.request_id if err.request_id is not None else reply.request_id
    trace_id = err.trace_id or reply.trace_id
    return _frame(ServerType.ERROR, err.to_data(), ReplyTo(request_id, trace_id))


def server_draining(reconnect_after_ms: int) -> OutboundFrame:
    return _frame(
        ServerType.SERVER_DRAINING,
        {"reconnectAfterMs": reconnect_after_ms},
        ReplyTo.unsolicited(),
    )


def pong(reply: ReplyTo) -> OutboundFrame:
    return _frame(ServerType.PONG, {}, reply)
