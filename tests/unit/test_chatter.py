"""The chaos tests' and benchmarks' client (tests/support/chatter.py) must not hang on an
instance that answers the WebSocket upgrade late: trio-websocket 0.12.2's own
``connect_timeout`` does not end ``open_websocket_url`` once the TCP connect is done (its
reader task keeps the context manager's nursery open), which left 200 of 500 clients of
the rolling-upgrade benchmark waiting for ever."""

from __future__ import annotations

import time

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from tests.support.chatter import Chatter


async def test_a_late_handshake_ends_the_session_at_the_deadline() -> None:
    async def late(request: WebSocketRequest) -> None:
        await trio.sleep(1.5)  # the upgrade is answered after the client's deadline
        ws = await request.accept(subprotocol="chat.v1")
        await ws.send_message('{"type": "session.ready", "data": {}}')
        await trio.sleep(30)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, late, "127.0.0.1", 0, None)
        chatter = Chatter([f"ws://127.0.0.1:{server.port}/ws"], "token", "conversation")
        chatter.ready_timeout = 0.5
        t0 = time.monotonic()
        with trio.fail_after(10):  # without our own deadline: for ever
            drop = await chatter._session("hello", "message-id", 3)
        waited = time.monotonic() - t0
        assert drop == 3  # nothing happened: the caller reconnects as it would after a drop
        assert chatter.timeline[-1][1] == "no session.ready within 0.5 s"
        assert 0.5 <= waited < 1.4
        nursery.cancel_scope.cancel()
