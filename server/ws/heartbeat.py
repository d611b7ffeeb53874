"""Pings and pong tracking for Hypercorn's WebSocket stream.

Hypercorn can ping every ``websocket_ping_interval`` seconds, with a task per socket
that wakes on its own timer, and it ignores the pongs (ASGI cannot show them to the
application). Parley turns Hypercorn's pings off and sends its own: this module patches
Hypercorn's ``WSStream`` (version 0.17/0.18) so that each accepted WebSocket carries a
:class:`HeartbeatState` in its ASGI scope (``"parley.heartbeat"``) holding a way to send a
ping and the time of the oldest unanswered one. The instance's sweeper
(``server/ws/connection.py``) marks the pings that are due, all in one pass, and wakes
each connection's writer, which sends it between frames; the sweeper drops a peer whose
pong is overdue. Pings sent in one burst cost a fourth of what a timer per socket costs
(``benchmarks/ws_stack.py``: ~54 against ~229 µs per ping/pong on this box), and only the
writer writes to the socket, so a peer that does not read holds up its own writer, never
the sweeper. ``install()`` is idempotent; a Hypercorn whose stream class no longer has
the patched methods fails loudly at start-up.
"""

from __future__ import annotations

import time
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping, Pong
from wsproto.frame_protocol import CloseReason

__all__ = ["SCOPE_KEY", "HeartbeatState", "install"]

SCOPE_KEY = "parley.heartbeat"


class HeartbeatState:
    """One socket's pings: the first is due at accept, then one every interval
    (:meth:`schedule`, by the sweeper); :meth:`send_due_ping` (by the writer) sends it."""

    __slots__ = ("_stream", "last_ping", "outstanding_since", "ping_due", "pongs")

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream  # Hypercorn's WSStream
        self.outstanding_since: float | None = None
        self.pongs = 0
        self.ping_due = False
        self.last_ping = time.monotonic()  # when the last ping was scheduled

    def ping_sent(self, now: float | None = None) -> None:
        if self.outstanding_since is None:
            self.outstanding_since = time.monotonic() if now is None else now

    def pong_received(self) -> None:
        self.outstanding_since = None
        self.pongs += 1

    def overdue(self, timeout: float, now: float | None = None) -> bool:
        """``now``: ``time.monotonic()`` if the caller has read it already."""
        since = self.outstanding_since
        if since is None:
            return False
        return (time.monotonic() if now is None else now) - since > timeout

    def due_now(self, now: float) -> None:
        """A ping is due (at accept): the pong deadline runs from here."""
        self.ping_due = True
        self.last_ping = now
        self.ping_sent(now)

    def schedule(self, interval: float, now: float) -> bool:
        """The sweeper's call at ``now`` (monotonic): True when a ping has become due (the
        caller wakes the writer). The pings keep their interval on average; one that
        comes a sweep late does not push the next ones back."""
        if now - self.last_ping < interval:
            return False
        self.last_ping = self.last_ping + interval if now - self.last_ping < 2 * interval else now
        self.ping_due = True
        self.ping_sent(now)
        return True

    async def send_due_ping(self) -> None:
        """The writer's call: send the ping that is due, if one is."""
        if self.ping_due:
            self.ping_due = False
            stream = self._stream
            if stream is not None and not stream.closed:
                await stream._send_wsproto_event(Ping())


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    cls: Any = ws_stream.WSStream
    for name in ("_accept", "_handle_events", "_send_wsproto_event"):
        if not hasattr(cls, name):
            raise RuntimeError(f"hypercorn WSStream has no {name}: update server/ws/heartbeat.py")
    original_accept = cls._accept

    async def _accept(self: Any, message: Any) -> None:
        state = HeartbeatState(self)
        self.scope[SCOPE_KEY] = state
        await original_accept(self, message)
        state.due_now(time.monotonic())  # "a ping at accept" (docs/PROTOCOL.md)
        # The upgrade's parsed copies are not read after the accept (Parley kept the
        # headers it needs; access logging is off): drop them, with the bearer token
        hs = self.handshake
        hs.connection_tokens = hs.extensions = hs.subprotocols = hs.key = None
        self.scope["headers"] = []
        self.scope["subprotocols"] = []

    async def _handle_events(self: Any) -> None:
        # Hypercorn's own loop, plus the Pong branch.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except ws_stream.FrameTooLargeError:
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                    )
                    break
                if event.message_finished:
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, Pong):
                state = self.scope.get(SCOPE_KEY)
                if state is not None:
                    state.pong_received()
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(ws_stream.StreamClosed(stream_id=self.stream_id))

    cls._accept = _accept
    cls._handle_events = _handle_events
    _installed = True
