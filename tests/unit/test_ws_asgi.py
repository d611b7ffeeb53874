"""The ASGI ``/ws`` front (server/ws/asgi.py): routing, the WebSocket's reads and writes,
refusals as HTTP answers. End to end, every /ws test runs through it (tests/e2e)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.errors import ApiError
from server.security import SECURITY_HEADERS
from server.ws import asgi
from server.ws.asgi import Disconnected, WebSocket, WsFront

EXT = {"websocket.http.response": {}}


class Peer:
    """The server side of one ASGI call: what the app receives, what it sent."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.events = list(events)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _scope(path: str = "/ws", **extra: Any) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "headers": [(b"Origin", b"http://a"), (b"origin", b"http://b"), (b"X-Y", b"1")],
        "subprotocols": ["chat.v1", "bearer.t"],
        "client": ("10.0.0.7", 5555),
        **extra,
    }


async def test_only_upgrades_to_the_path_reach_the_handler() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], _r: Any, _s: Any) -> None:
        seen.append(f"app {scope['type']} {scope.get('path')}")

    async def handler(ws: WebSocket) -> None:
        seen.append(f"handler {ws.scope['path']}")

    front = WsFront(app, handler)
    peer = Peer()
    await front({"type": "http", "path": "/ws"}, peer.receive, peer.send)
    await front(_scope("/other"), peer.receive, peer.send)
    await front({"type": "lifespan"}, peer.receive, peer.send)
    await front(_scope(), peer.receive, peer.send)
    assert seen == ["app http /ws", "app websocket /other", "app lifespan None", "handler /ws"]


async def test_websocket_reads_the_scope_and_messages() -> None:
    peer = Peer(
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.receive", "bytes": b"\x01"},
        {"type": "websocket.receive", "bytes": b"", "text": None},  # an empty binary frame
        {"type": "websocket.disconnect", "code": 1001},
    )
    ws = WebSocket(_scope(), peer.receive, peer.send)
    assert ws.headers["origin"] == "http://a"  # the first of a repeated header, any case
    assert "x-y" not in ws.headers  # only the headers Parley reads are kept
    assert ws.requested_subprotocols == ["chat.v1", "bearer.t"]
    assert ws.remote_addr == "10.0.0.7"
    assert await ws.receive() == "hello"  # the connect event is skipped
    assert await ws.receive() == b"\x01"
    assert await ws.receive() is None
    with pytest.raises(Disconnected):
        await ws.receive()
    assert WebSocket({"type": "websocket"}, peer.receive, peer.send).remote_addr == ""


async def test_websocket_accepts_sends_and_closes() -> None:
    peer = Peer()
    worker = (b"x-parley-worker", b"123")  # put there by server.process.WorkerHeader
    ws = WebSocket(_scope(**{asgi.WORKER_HEADER_KEY: worker}), peer.receive, peer.send)
    assert not ws.accepted
    await ws.accept("chat.v1")
    await ws.send("frame")
    await ws.close(4001, "AUTH_EXPIRED")
    assert ws.accepted
    assert peer.sent == [
        {"type": "websocket.accept", "subprotocol": "chat.v1", "headers": [worker]},
        {"type": "websocket.send", "text": "frame"},
        {"type": "websocket.close", "code": 4001, "reason": "AUTH_EXPIRED"},
    ]


async def test_a_refusal_is_an_http_error_answer_with_the_edge_headers() -> None:
    refused: list[str] = []

    async def handler(_ws: WebSocket) -> None:
        raise ApiError("RATE_LIMITED", "too many upgrades", retry_after=2.2)

    front = WsFront(None, handler, on_refused=lambda err: refused.append(err.code))
    peer = Peer()
    worker = (b"x-parley-worker", b"123")
    await front(_scope(extensions=EXT, **{asgi.WORKER_HEADER_KEY: worker}), peer.receive, peer.send)
    start, body = peer.sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"3"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-parley-worker"] == b"123"
    for name, value in SECURITY_HEADERS.items():
        assert headers[name.lower().encode()] == value.encode()
    payload = orjson.loads(body["body"])
    assert payload["error"]["code"] == "RATE_LIMITED"
    assert payload["error"]["message"] == "too many upgrades"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert refused == ["RATE_LIMITED"]


async def test_without_the_response_extension_a_refusal_closes_the_handshake() -> None:
    async def handler(_ws: WebSocket) -> None:
        raise ApiError("FORBIDDEN", "no")

    peer = Peer()
    await WsFront(None, handler)(_scope(), peer.receive, peer.send)
    assert peer.sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_fault_is_a_500_before_accepting_and_1011_after() -> None:
    async def before(_ws: WebSocket) -> None:
        raise RuntimeError("bug")

    async def after(ws: WebSocket) -> None:
        await ws.accept("chat.v1")
        raise RuntimeError("bug")

    peer = Peer()
    await WsFront(None, before)(_scope(extensions=EXT), peer.receive, peer.send)
    assert peer.sent[0]["status"] == 500
    assert orjson.loads(peer.sent[1]["body"])["error"]["code"] == "SERVER_ERROR"
    peer = Peer()
    await WsFront(None, after)(_scope(extensions=EXT), peer.receive, peer.send)
    assert peer.sent[-1] == {"type": "websocket.close", "code": 1011, "reason": "SERVER_ERROR"}


async def test_a_peer_that_left_ends_the_call_quietly() -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.accept("chat.v1")
        await ws.receive()

    peer = Peer({"type": "websocket.disconnect", "code": 1006})
    await WsFront(None, handler)(_scope(), peer.receive, peer.send)
    assert peer.sent == [{"type": "websocket.accept", "subprotocol": "chat.v1", "headers": []}]
