"""A connection's outbound side: the coalescing queue plus the writer's wake-up.

Pushing never blocks and never fails (a turn runner must not wait for a slow
client); the queue merges consecutive deltas of one message while the writer
is behind. The connection watches :attr:`Outbox.over_since`: past the byte
bound for 10 s it closes 4008 and the client resumes (going over calls
:attr:`Outbox.on_over`, so the sweeper looks at it on every sweep from then on).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from protocol.coalesce import OutboundQueue
from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta

__all__ = ["Outbox"]


class Outbox:
    __slots__ = ("_t0", "_waiter", "closed", "on_over", "over_since", "queue")

    def __init__(self, *, max_frames: int = 2048, max_bytes: int = 1024 * 1024) -> None:
        self.queue = OutboundQueue(max_frames=max_frames, max_bytes=max_bytes)
        self._t0: deque[tuple[float, float] | None] | None = None  # made on push, dropped empty
        self._waiter: trio.lowlevel.Task | None = None
        self.closed = False
        self.over_since: float | None = None
        # called when the queue goes over its bound (the hub then watches the connection)
        self.on_over: Callable[[], None] | None = None

    def _t0_push(self, value: tuple[float, float] | None) -> None:
        if self._t0 is None:
            self._t0 = deque()
        self._t0.append(value)

    def _pushed(self) -> None:
        if self.queue.over_limit and self.over_since is None:
            self.over_since = trio.current_time()
            if self.on_over is not None:
                self.on_over()
        self.wake()

    def push_frame(self, frame: OutboundFrame) -> None:
        if self.closed:
            return
        self.queue.push_frame(frame)
        self._t0_push(None)
        self._pushed()

    def push_stream(
        self, delta: StreamDelta, reply: ReplyTo, t0: float | None = None, gap: float = 1.0
    ) -> None:
        """``t0``: when the delta came from upstream; ``gap``: how far apart that message's
        deltas come (the writer's coalescing reads both)."""
        if self.closed:
            return
        if not self.queue.push_stream(delta, reply):
            self._t0_push(None if t0 is None else (t0, gap))
        self._pushed()

    def pop(self) -> tuple[OutboundFrame, float | None] | None:
        """The next frame to write and its upstream time, or None when the queue is empty."""
        frame = self.queue.pop()
        if frame is None:
            return None
        if self.over_since is not None and not self.queue.over_limit:
            self.over_since = None
        assert self._t0 is not None
        head = self._t0.popleft()
        if not self._t0:
            self._t0 = None
        return frame, None if head is None else head[0]

    def head_timing(self) -> tuple[float, float] | None:
        """For a delta frame at the head: when its first delta arrived, and the usual gap
        between that message's deltas (None: the head is another frame, or none)."""
        return self._t0[0] if self._t0 else None

    async def wait(self) -> None:
        """Until something is pushed (or :meth:`wake` is called). One waiter: the writer."""
        if self.queue:
            return
        # No Event per wait (an idle writer would hold one for the socket's life): the
        # writer parks itself, and wake() or a cancellation (whichever comes first, each
        # clearing the waiter) reschedules it exactly once.
        if self._waiter is not None:
            raise RuntimeError("an outbox has one waiter: its connection's writer")
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._aborted)

    def _aborted(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None  # cancelled: trio reschedules it; wake() must not
        return trio.lowlevel.Abort.SUCCEEDED

    def wake(self) -> None:
        task, self._waiter = self._waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def seal(self) -> None:
        """The connection is closing: deliver what is queued, accept nothing new."""
        self.closed = True
        self.wake()

    def drop_queued(self) -> None:
        """A consumer too slow to keep: forget what it has not read (it will resume)."""
        self.queue.clear()
        self._t0 = None
        self.over_since = None

    def close(self) -> None:
        """The connection is gone: drop everything."""
        self.closed = True
        self.queue.clear()
        self._t0 = None
        self.wake()
