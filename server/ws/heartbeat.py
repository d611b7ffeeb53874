"""Pong tracking for Hypercorn's WebSocket stream.

Hypercorn sends a ping every ``websocket_ping_interval`` seconds but ignores
pongs, and ASGI cannot show them to the application. This module patches
Hypercorn's ``WSStream`` (version 0.17/0.18) so that each accepted WebSocket
carries a :class:`HeartbeatState` in its ASGI scope (``"parley.heartbeat"``):
the time of the oldest unanswered ping. The connection's heartbeat task drops
a peer whose pong is overdue. ``install()`` is idempotent; a Hypercorn whose
stream class no longer has the patched methods fails loudly at start-up.
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
    __slots__ = ("outstanding_since", "pongs")

    def __init__(self) -> None:
        self.outstanding_since: float | None = None
        self.pongs = 0

    def ping_sent(self) -> None:
        if self.outstanding_since is None:
            self.outstanding_since = time.monotonic()

    def pong_received(self) -> None:
        self.outstanding_since = None
        self.pongs += 1

    def overdue(self, timeout: float, now: float | None = None) -> bool:
        """``now``: ``time.monotonic()`` if the caller has read it already."""
        since = self.outstanding_since
        if since is None:
            return False
        return (time.monotonic() if now is None else now) - since > timeout


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    cls: Any = ws_stream.WSStream
    for name in ("_accept", "_handle_events", "_send_pings", "_send_wsproto_event"):
        if not hasattr(cls, name):
            raise RuntimeError(f"hypercorn WSStream has no {name}: update server/ws/heartbeat.py")
    original_accept = cls._accept

    async def _accept(self: Any, message: Any) -> None:
        self.scope[SCOPE_KEY] = HeartbeatState()
        await original_accept(self, message)

    async def _send_pings(self: Any) -> None:
        state = self.scope.get(SCOPE_KEY)
        while not self.closed:
            if state is not None:
                state.ping_sent()
            await self._send_wsproto_event(Ping())
            await self.context.sleep(self.config.websocket_ping_interval)

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
    cls._send_pings = _send_pings
    cls._handle_events = _handle_events
    _installed = True
