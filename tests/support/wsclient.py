"""A protocol-speaking test client over a real socket (trio-websocket), plus REST (httpx)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from protocol.codec import validate_server_frame

__all__ = ["Rest", "TurnResult", "WsClient", "connect", "expect_close"]


class Rest:
    """REST over a real socket against a live server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        ip: str | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if ip:
            headers["X-Forwarded-For"] = ip
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            return await client.request(method, path, json=json, headers=headers)

    async def register(self) -> dict[str, Any]:
        email = f"ws-{uuid.uuid4().hex[:12]}@example.com"
        r = await self.call(
            "POST",
            "/api/v1/auth/register",
            json={"email": email, "password": "password 123"},
            ip=f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.1",
        )
        assert r.status_code == 201, r.text
        body = r.json()
        body["email"], body["password"] = email, "password 123"
        return dict(body)

    async def login(self, email: str, password: str) -> dict[str, Any]:
        r = await self.call(
            "POST", "/api/v1/auth/login", json={"email": email, "password": password}
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def conversation(self, token: str, title: str = "chat") -> str:
        r = await self.call("POST", "/api/v1/conversations", json={"title": title}, token=token)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def history(self, token: str, conv_id: str) -> list[dict[str, Any]]:
        r = await self.call(
            "GET", f"/api/v1/conversations/{conv_id}/messages?limit=500", token=token
        )
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@dataclass
class TurnResult:
    ack: dict[str, Any]
    streams: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(f["data"]["delta"] for f in self.streams)


class WsClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._n = 0

    async def send(
        self, type_: str, data: dict[str, Any] | None = None, *, request_id: str | None = None
    ) -> str:
        self._n += 1
        rid = request_id or f"r-{self._n}"
        frame: dict[str, Any] = {"type": type_, "requestId": rid}
        if data is not None:
            frame["data"] = data
        await self.ws.send_message(orjson.dumps(frame).decode())
        return rid

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_message(text)

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            raw = await self.ws.get_message()
        validate_server_frame(raw)  # every frame the server sends must match the contract
        frame = dict(orjson.loads(raw))
        self.received.append(frame)
        return frame

    async def recv_type(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == type_:
                return frame

    async def turn(
        self, conv_id: str, content: str, *, message_id: str | None = None, timeout: float = 20.0
    ) -> TurnResult:
        """chat.send, then every frame of the turn up to chat.done (or an error before ack)."""
        mid = message_id or str(uuid.uuid4())
        rid = await self.send(
            "chat.send", {"conversationId": conv_id, "messageId": mid, "content": content}
        )
        first = await self.recv(timeout)
        while first["type"] == "session.ready":
            first = await self.recv(timeout)
        if first["type"] == "error":
            return TurnResult(ack={}, errors=[first])
        assert first["type"] == "chat.ack", first
        assert first["requestId"] == rid
        result = TurnResult(ack=first)
        while True:
            frame = await self.recv(timeout)
            if frame["type"] == "chat.stream":
                result.streams.append(frame)
            elif frame["type"] == "error":
                result.errors.append(frame)
            elif frame["type"] == "chat.done":
                result.done = frame
                return result


@asynccontextmanager
async def connect(
    url: str,
    token: str | None,
    *,
    subprotocols: list[str] | None = None,
    origin: str | None = None,
    ready: bool = True,
) -> AsyncIterator[WsClient]:
    protos = (
        subprotocols
        if subprotocols is not None
        else ["chat.v1"] + ([f"bearer.{token}"] if token else [])
    )
    headers = [("Origin", origin)] if origin else None
    async with open_websocket_url(
        url, subprotocols=protos, extra_headers=headers, message_queue_size=100_000
    ) as ws:
        client = WsClient(ws)
        if ready:
            hello = await client.recv()
            assert hello["type"] == "session.ready", hello
        yield client


async def expect_close(ws_url: str, subprotocols: list[str]) -> tuple[int, str | None]:
    """Open a socket that the server accepts and then closes before any frame: its close
    code and reason."""
    async with open_websocket_url(ws_url, subprotocols=subprotocols) as ws:
        assert ws.subprotocol == "chat.v1"  # accepted first, so the browser sees the code
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason
