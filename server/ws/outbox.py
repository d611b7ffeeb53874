"""A connection's outbound side: the coalescing queue plus the writer's wake-up.

Pushing never blocks and never fails (a turn runner must not wait for a slow
client); the queue merges consecutive deltas of one message while the writer
is behind. The connection watches :attr:`Outbox.over_since`: past the byte
bound for 10 s it closes 4008 and the client resumes.
"""

from __future__ import annotations

from collections import deque

import trio

from protocol.coalesce import OutboundQueue
from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, *, max_frames: int = 2048, max_bytes: int = 1024 * 1024) -> None:
        self.queue = OutboundQueue(max_frames=max_frames, max_bytes=max_bytes)
        # When each queued item's first delta came from upstream (None for other frames),
        # kept beside the queue: relay latency is measured from it when the frame is written.
        # and how far apart that message's deltas come (None for other frames)
        self._t0: deque[tuple[float, float] | None] = deque()
        self._ready = trio.Event()
        self.closed = False
        self.over_since: float | None = None

    def _pushed(self) -> None:
        if self.queue.over_limit and self.over_since is None:
            self.over_since = trio.current_time()
        self._ready.set()

    def push_frame(self, frame: OutboundFrame) -> None:
        if self.closed:
            return
        self.queue.push_frame(frame)
        self._t0.append(None)
        self._pushed()

    def push_stream(
        self, delta: StreamDelta, reply: ReplyTo, t0: float | None = None, gap: float = 1.0
    ) -> None:
        """``t0``: when the delta came from upstream; ``gap``: how far apart that message's
        deltas come (the writer's coalescing reads both)."""
        if self.closed:
            return
        if not self.queue.push_stream(delta, reply):
            self._t0.append(None if t0 is None else (t0, gap))
        self._pushed()

    def pop(self) -> tuple[OutboundFrame, float | None] | None:
        """The next frame to write and its upstream time, or None when the queue is empty."""
        frame = self.queue.pop()
        if frame is None:
            return None
        if self.over_since is not None and not self.queue.over_limit:
            self.over_since = None
        head = self._t0.popleft()
        return frame, None if head is None else head[0]

    def head_timing(self) -> tuple[float, float] | None:
        """For a delta frame at the head: when its first delta arrived, and the usual gap
        between that message's deltas (None: the head is another frame, or none)."""
        return self._t0[0] if self._t0 else None

    async def wait(self) -> None:
        """Until something is pushed (or :meth:`wake` is called)."""
        if self.queue:
            return
        self._ready = trio.Event()
        await self._ready.wait()

    def wake(self) -> None:
        self._ready.set()

    def seal(self) -> None:
        """The connection is closing: deliver what is queued, accept nothing new."""
        self.closed = True
        self._ready.set()

    def drop_queued(self) -> None:
        """A consumer too slow to keep: forget what it has not read (it will resume)."""
        self.queue.clear()
        self._t0.clear()
        self.over_since = None

    def close(self) -> None:
        """The connection is gone: drop everything."""
        self.closed = True
        self.queue.clear()
        self._t0.clear()
        self._ready.set()
