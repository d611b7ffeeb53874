"""A connection's outbound queue, which merges stream deltas while the writer is behind.

The turn runner pushes; the connection's writer pops. A `chat.stream` delta
pushed right behind a queued delta of the same message (same conversation,
message, seq, request id and trace id, and the next chunk number) joins that
queued item instead of queueing a new frame: the popped frame's `delta` is
the concatenation and its `chunk` the number of the last delta it holds.
Anything else queued in between (another message's delta, an `chat.ack`, a
`chat.done`...) stops the merge, so the order of frames is kept, and no text
is lost, duplicated or moved.

Stream items are encoded when popped, so they keep merging as long as they
wait. Pre-encoded frames are queued as they are.

The queue never refuses a frame (that would lose text): it reports. It is
`over_limit` when it holds more than `max_bytes` bytes or `max_frames` frames;
the server then starts its stall timer and closes 4008 if that lasts.

`bytes_queued` is exactly what the queued frames weigh once encoded (UTF-8
bytes), kept up to date on each push and pop without encoding anything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import orjson

from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta, chat_stream

__all__ = ["OutboundFrame", "OutboundQueue"]


@dataclass(slots=True)
class _Stream:
    first: StreamDelta
    reply: ReplyTo
    chunk: int
    nbytes: int
    parts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Frame:
    text: str
    type: str
    nbytes: int


_STREAM_OVERHEAD = len(
    '{"type":"chat.stream","requestId":,"traceId":"","data":'
    '{"conversationId":"","messageId":"","seq":,"chunk":,"delta":""}}'
)


def _json_size(text: str) -> int:
    return len(orjson.dumps(text)) - 2


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


_NO_ITEMS: tuple[()] = ()


class OutboundQueue:
    """A FIFO of outbound frames for one connection, merging adjacent deltas."""

    __slots__ = ("_bytes", "_items", "max_bytes", "max_frames", "merged_total", "pushed_total")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("bounds must be positive")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._items: deque[_Stream | _Frame] | tuple[()] = _NO_ITEMS  # a deque while non-empty
        self._bytes = 0
        self.merged_total = 0  # deltas that joined a queued frame instead of making their own
        self.pushed_total = 0  # everything pushed (deltas and frames)

    def _append(self, item: _Stream | _Frame) -> None:
        if not self._items:
            self._items = deque()
        self._items.append(item)

    def push_stream(self, delta: StreamDelta, reply: ReplyTo) -> bool:
        """Queue one `chat.stream` delta; True when it merged into the tail."""
        text = delta.text
        if not text:
            raise ValueError("empty delta")
        self.pushed_total += 1
        size = _json_size(text)
        chunk = delta.chunk
        tail = self._items[-1] if self._items else None
        if (
            isinstance(tail, _Stream)
            and tail.chunk + 1 == chunk
            and tail.first.message_id == delta.message_id
            and tail.first.conversation_id == delta.conversation_id
            and tail.first.seq == delta.seq
            and (tail.reply is reply or tail.reply == reply)
        ):
            size += len(str(chunk)) - len(str(tail.chunk))
            tail.parts.append(text)
            tail.chunk = chunk
            tail.nbytes += size
            self._bytes += size
            self.merged_total += 1
            return True
        request_id = reply.request_id
        envelope = (
            _STREAM_OVERHEAD
            + _json_size(delta.conversation_id)
            + _json_size(delta.message_id)
            + len(str(delta.seq))
            + len(str(chunk))
            + _json_size(reply.trace_id)
            + (4 if request_id is None else _json_size(request_id) + 2)
        )
        item = _Stream(delta, reply, chunk, envelope + size, [text])
        self._append(item)
        self._bytes += item.nbytes
        return False

    def push_frame(self, frame: OutboundFrame) -> None:
        """Queue an already encoded frame (it is never merged)."""
        self.pushed_total += 1
        item = _Frame(frame.text, frame.type, _text_size(frame.text))
        self._append(item)
        self._bytes += item.nbytes

    def pop(self) -> OutboundFrame | None:
        """The oldest frame, encoded; None when the queue is empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        if not self._items:
            self._items = _NO_ITEMS
        self._bytes -= item.nbytes
        if isinstance(item, _Frame):
            return OutboundFrame(item.text, item.type)
        first = item.first
        if len(item.parts) > 1:
            first = StreamDelta(
                first.conversation_id, first.message_id, first.seq, item.chunk, "".join(item.parts)
            )
        return chat_stream(item.reply, first)

    def clear(self) -> None:
        """Drop everything queued (the connection is gone)."""
        self._items = _NO_ITEMS
        self._bytes = 0

    @property
    def bytes_queued(self) -> int:
        return self._bytes

    @property
    def frames_queued(self) -> int:
        return len(self._items)

    @property
    def over_limit(self) -> bool:
        return self._bytes > self.max_bytes or len(self._items) > self.max_frames

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)
