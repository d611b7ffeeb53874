"""``/ws`` served straight from ASGI, in front of Quart (the REST API stays on Quart).

Quart's WebSocket wrapper adds, per connection, a task that copies every inbound message
into a queue of its own, a context, and a signal dispatch per frame sent and received
(``benchmarks/ws_stack.py`` measures what that costs). :class:`WsFront` takes the
``/ws`` upgrades before Quart sees them and hands the handler a :class:`WebSocket`: the
ASGI ``receive`` and ``send`` callables with the few operations Parley needs. Hypercorn
still owns the socket, the wsproto state, the pings and the inbound queue's bound
(``max_app_queue_size``), so backpressure and the close codes are unchanged.

A refusal before the upgrade is a plain HTTP answer, as from every REST route: the error
body, the security headers and ``Retry-After`` (through ASGI's
``websocket.http.response`` extension, which Hypercorn implements).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from server.errors import ApiError, error_body, retry_after_header
from server.logging import get_logger
from server.security import SECURITY_HEADERS

__all__ = ["WORKER_HEADER_KEY", "Disconnected", "WebSocket", "WsFront"]

log = get_logger("parley.ws")
#: where server.process.WorkerHeader puts its ``X-Parley-Worker`` header for the socket's
#: answers (the upgrade's accept or refusal), which skip its wrapper
WORKER_HEADER_KEY = "parley.worker_header"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# the only request headers Parley reads (admission, session_log); ASGI names are lower-case
_WANTED = frozenset((b"origin", b"x-forwarded-for", b"traceparent"))
_REFUSAL_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


class Disconnected(Exception):
    """The peer is gone (ASGI ``websocket.disconnect``)."""


class WebSocket:
    """One upgrade's ASGI scope and callables. ``headers`` maps the lower-case names of
    the request headers Parley reads (``origin``, ``x-forwarded-for``, ``traceparent``)
    to the first value sent under that name; no other header is kept for the socket's
    life (the bearer token travels in the subprotocols, read once at the handshake)."""

    __slots__ = ("_receive", "_send", "accepted", "headers", "scope")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.accepted = False
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            name = name.lower()
            if name in _WANTED:
                headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self.headers = headers

    def _extra(self) -> list[tuple[bytes, bytes]]:
        header = self.scope.get(WORKER_HEADER_KEY)
        return [header] if header is not None else []

    @property
    def requested_subprotocols(self) -> list[str]:
        return list(self.scope.get("subprotocols") or ())

    @property
    def remote_addr(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def accept(self, subprotocol: str) -> None:
        await self._send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": self._extra()}
        )
        self.accepted = True

    async def receive(self) -> str | bytes | None:
        """The next message: text, bytes, or None for an empty binary frame (as Quart read
        them). Raises :class:`Disconnected` once the peer is gone."""
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                return event.get("bytes") or event.get("text")
            if kind == "websocket.disconnect":
                raise Disconnected
            # "websocket.connect" (the upgrade request itself): nothing to read

    async def send(self, text: str) -> None:
        """A text frame; after the peer has gone, nothing happens (Hypercorn drops it)."""
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def refuse(self, err: ApiError) -> None:
        """Answer the upgrade with an HTTP error instead of accepting it."""
        body = orjson.dumps(error_body(err.code, err.message, err.retryable, secrets.token_hex(16)))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *_REFUSAL_HEADERS,
            *self._extra(),
        ]
        if err.retry_after is not None:
            headers.append((b"retry-after", retry_after_header(err.retry_after).encode()))
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            await self._send({"type": "websocket.close", "code": 1008})  # the server's 403
            return
        await self._send(
            {"type": "websocket.http.response.start", "status": err.status, "headers": headers}
        )
        await self._send({"type": "websocket.http.response.body", "body": body})


class WsFront:
    """ASGI: WebSocket upgrades to ``path`` go to ``handler``; everything else to ``app``.

    ``handler`` raises :class:`~server.errors.ApiError` to refuse before accepting; any
    other exception is logged and answered with a 500 (before accepting) or close 1011.
    ``on_refused`` is told each refusal's error (for the error metrics)."""

    def __init__(
        self,
        app: Any,
        handler: Callable[[WebSocket], Awaitable[None]],
        *,
        path: str = "/ws",
        on_refused: Callable[[ApiError], None] | None = None,
    ) -> None:
        self.app = app
        self.handler = handler
        self.path = path
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        ws = WebSocket(scope, receive, send)
        try:
            await self.handler(ws)
        except Disconnected:
            return
        except ApiError as err:
            if self.on_refused is not None:
                self.on_refused(err)
            if ws.accepted:  # a refusal is raised before accepting; never after
                await ws.close(1011, "SERVER_ERROR")
            else:
                await ws.refuse(err)
        except Exception:
            log.exception("unhandled_ws_error")
            if ws.accepted:
                await ws.close(1011, "SERVER_ERROR")
            else:
                await ws.refuse(ApiError("SERVER_ERROR", "internal error"))
