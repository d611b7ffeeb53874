"""The ``/ws`` endpoint: handshake, then one nursery with a reader, a writer and a heartbeat.

Only the writer writes to the socket. Everything else (replies, turn frames,
the close) is pushed to the connection's :class:`Outbox` or set as the close
to perform; the writer drains the outbox and then closes.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio
from quart import abort, websocket

from protocol.close_codes import CloseCode, close_reason
from protocol.codec import (
    MAX_FRAME_BYTES,
    encode_error,
    encode_server_frame,
    new_trace_id,
    parse_client_frame,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import (
    MAX_CONTENT_CHARS,
    AuthRefresh,
    ChatCancel,
    ChatResume,
    ChatSend,
    ClientType,
    ServerType,
    format_timestamp,
)
from server.api.common import authenticate, forwarded_ip, is_session_denied, note_activity
from server.auth.tokens import AccessClaims
from server.errors import ApiError
from server.load import LoadMonitor
from server.logging import get_logger
from server.services import Services
from server.turns import MAX_TURNS_PER_USER, Listener, TurnManager
from server.ws.heartbeat import SCOPE_KEY, HeartbeatState
from server.ws.hub import Hub
from server.ws.outbox import MAX_OUTBOX_BYTES, MAX_OUTBOX_FRAMES, Outbox
from store.cache import CacheError
from store.db import utcnow

__all__ = ["WsConfig", "handle_websocket"]

log = get_logger("parley.ws")

SUBPROTOCOL = "chat.v1"
BEARER_PREFIX = "bearer."


@dataclass(frozen=True)
class WsConfig:
    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    stall_timeout: float = 10.0  # past the outbox bound this long: close 4008
    outbox_max_bytes: int = MAX_OUTBOX_BYTES
    outbox_max_frames: int = MAX_OUTBOX_FRAMES
    invalid_frames_limit: int = 10
    invalid_frames_window: float = 60.0
    max_connections_per_user: int = 10
    max_connections: int = 10_000
    drain_reconnect_ms: int = 1000
    # When the process is short of CPU (its event loop wakes late), a delta waits up to this
    # long for the next ones of its message, so one frame carries several: frames, not
    # tokens, are what costs CPU. 0 turns it off. A process with CPU to spare never waits.
    coalesce_seconds: float = 0.04


@dataclass(eq=False)
class Connection:
    id: str
    user_id: str
    session_id: str
    claims: AccessClaims
    heartbeat: HeartbeatState | None = None
    outbox: Outbox = field(default_factory=Outbox)
    close_code: int | None = None
    close_reason: str = ""
    closing: trio.Event = field(default_factory=trio.Event)
    invalid_at: deque[float] = field(default_factory=deque)

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close after what is already queued (first request wins)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.closing.set()
        self.outbox.seal()


def _origin_allowed(svc: Services, origin: str | None) -> bool:
    if origin is None:
        return True  # not a browser
    return origin.rstrip("/") in svc.settings.origins


def _client_ip(svc: Services) -> str:
    ip = forwarded_ip(
        websocket.headers.get("X-Forwarded-For", ""),
        websocket.remote_addr,
        trust_proxy=svc.settings.trust_proxy_headers,
    )
    return ip or ""


async def handle_websocket(
    svc: Services, hub: Hub, turns: TurnManager, cfg: WsConfig, load: LoadMonitor
) -> None:
    """The whole life of one WebSocket, from the HTTP upgrade to the close."""
    if svc.draining.is_set():
        abort(503)
    if not _origin_allowed(svc, websocket.headers.get("Origin")):
        abort(403)
    offered = websocket.requested_subprotocols
    if SUBPROTOCOL not in offered:
        abort(400)
    try:
        allowed, _retry = await svc.cache.hit_rate(
            f"rl:wsup:{_client_ip(svc)}", svc.settings.ws_upgrades_per_ip_per_hour, 3600
        )
    except CacheError:
        allowed = True
    if not allowed:
        abort(429)
    token = next((p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), "")
    await websocket.accept(subprotocol=SUBPROTOCOL)

    # Authenticate after accepting, so the browser can read the close code.
    try:
        if not token:
            raise ApiError("AUTH_INVALID", "no bearer subprotocol")
        principal = await authenticate(svc, token)
    except ApiError as exc:
        code = CloseCode.TOKEN_EXPIRED if exc.code == "AUTH_EXPIRED" else CloseCode.TOKEN_INVALID
        svc.metrics.ws_dropped.labels("auth").inc()
        await websocket.close(int(code), close_reason(code))
        return
    except Exception:
        log.exception("ws_auth_failed")
        svc.metrics.ws_dropped.labels("server_error").inc()
        await websocket.close(int(CloseCode.INTERNAL), "SERVER_ERROR")
        return
    if hub.count() >= cfg.max_connections:
        svc.metrics.ws_dropped.labels("instance_full").inc()
        await websocket.close(
            int(CloseCode.TRY_AGAIN_LATER), close_reason(CloseCode.TRY_AGAIN_LATER)
        )
        return
    if hub.count_for_user(principal.user_id) >= cfg.max_connections_per_user:
        svc.metrics.ws_dropped.labels("user_limit").inc()
        await websocket.close(
            int(CloseCode.TOO_MANY_CONNECTIONS), close_reason(CloseCode.TOO_MANY_CONNECTIONS)
        )
        return

    conn = Connection(
        id=uuid.uuid4().hex,
        user_id=principal.user_id,
        session_id=principal.session_id,
        claims=principal.claims,
        heartbeat=websocket.scope.get(SCOPE_KEY),  # type: ignore[arg-type]
        outbox=Outbox(max_frames=cfg.outbox_max_frames, max_bytes=cfg.outbox_max_bytes),
    )
    hub.add(conn)
    svc.metrics.ws_connections.inc()
    try:
        await note_activity(svc, conn.user_id)
        _push(conn, ServerType.SESSION_READY, _ready_data(svc, conn), None, new_trace_id())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_writer, svc, load, conn, cfg, nursery.cancel_scope)
                nursery.start_soon(_reader, svc, turns, conn, cfg)
                nursery.start_soon(_heartbeat, conn, nursery.cancel_scope)
        except Exception:
            log.exception("ws_connection_failed", userId=conn.user_id, connectionId=conn.id)
            svc.metrics.ws_dropped.labels("server_error").inc()
            with trio.move_on_after(2):
                await websocket.close(int(CloseCode.INTERNAL), "SERVER_ERROR")
    finally:
        hub.remove(conn)
        turns.detach(conn.outbox)
        conn.outbox.close()
        svc.metrics.ws_connections.dec()


def _ready_data(svc: Services, conn: Connection) -> dict[str, Any]:
    return {
        "userId": conn.user_id,
        "sessionId": conn.session_id,
        "connectionId": conn.id,
        "serverTime": format_timestamp(utcnow()),
        "limits": {
            "maxFrameBytes": MAX_FRAME_BYTES,
            "maxContentChars": MAX_CONTENT_CHARS,
            "maxConcurrentTurns": MAX_TURNS_PER_USER,
            "chatSendPerMinute": svc.settings.chat_sends_per_user_per_minute,
        },
    }


def _push(
    conn: Connection, type_: str, data: dict[str, Any], request_id: str | None, trace_id: str
) -> None:
    conn.outbox.push_frame(
        encode_server_frame(type_, data, request_id=request_id, trace_id=trace_id), type_
    )


async def _writer(
    svc: Services, load: LoadMonitor, conn: Connection, cfg: WsConfig, scope: trio.CancelScope
) -> None:
    """The only task that writes to the socket; performs the close once the queue is sent."""
    frames = svc.metrics.ws_frames
    out: dict[str, Any] = {}  # metric children by frame type (labels() costs per call)
    relay = svc.metrics.relay_seconds
    outbox = conn.outbox
    linger = cfg.coalesce_seconds
    while True:
        if linger > 0 and load.under_pressure and not conn.closing.is_set():
            head = outbox.head_timing()
            # Wait only for a message whose next delta is due within the window.
            if head is not None and head[1] < linger:
                wait = head[0] + linger - time.perf_counter()
                if wait > 0:
                    await trio.sleep(wait)
        item = outbox.pop()
        if item is None:
            if conn.closing.is_set():
                break
            await outbox.wait()
            continue
        frame, t0 = item
        await websocket.send(frame.text)
        counter = out.get(frame.type)
        if counter is None:
            counter = out[frame.type] = frames.labels("out", frame.type)
        counter.inc()
        if t0 is not None:
            relay.observe(time.perf_counter() - t0)
    await websocket.close(conn.close_code or 1000, conn.close_reason)
    scope.cancel()


async def _heartbeat(conn: Connection, scope: trio.CancelScope) -> None:
    """Once a close is decided, the writer gets 5 s to deliver it (a peer that reads
    nothing cannot hold the connection open); then the connection is dropped."""
    await conn.closing.wait()
    await trio.sleep(5.0)
    scope.cancel()


def check_connection(svc: Services, conn: Connection, cfg: WsConfig, now: float) -> None:
    """Pong deadline, token expiry, slow consumer: each one closes the connection."""
    if conn.closing.is_set():
        return
    if conn.heartbeat is not None and conn.heartbeat.overdue(cfg.pong_timeout):
        svc.metrics.ws_dropped.labels("pong_timeout").inc()
        conn.close(int(CloseCode.INTERNAL), "PING_TIMEOUT")
    elif conn.claims.exp <= time.time():
        svc.metrics.ws_dropped.labels("token_expired").inc()
        conn.close(int(CloseCode.TOKEN_EXPIRED), close_reason(CloseCode.TOKEN_EXPIRED))
    elif conn.outbox.over_since is not None and now - conn.outbox.over_since >= cfg.stall_timeout:
        svc.metrics.ws_dropped.labels("slow_consumer").inc()
        conn.outbox.drop_queued()
        conn.close(int(CloseCode.SLOW_CONSUMER), close_reason(CloseCode.SLOW_CONSUMER))


async def sweep_connections(svc: Services, hub: Hub, cfg: WsConfig, every: float = 0.5) -> None:
    """One task checks every connection of the instance: an idle socket never wakes up
    (10,000 per-connection timers cost most of a core; one sweep costs milliseconds)."""
    while True:
        await trio.sleep(every)
        now = trio.current_time()
        for conn in hub.all():
            check_connection(svc, conn, cfg, now)


async def _reader(svc: Services, turns: TurnManager, conn: Connection, cfg: WsConfig) -> None:
    frames = svc.metrics.ws_frames
    while not conn.closing.is_set():
        raw = await websocket.receive()
        try:
            if isinstance(raw, bytes):
                raise ProtocolError(ErrorCode.VALIDATION_FAILED, "text frames only")
            frame = parse_client_frame(raw)
        except ProtocolError as err:
            frames.labels("in", "invalid").inc()
            if err.close_code is not None:  # over 64 KiB: no reply, close 1009
                svc.metrics.ws_dropped.labels("frame_too_big").inc()
                conn.close(int(err.close_code), err.code.value)
                return
            _reply_error(svc, conn, err, new_trace_id())
            now = trio.current_time()
            conn.invalid_at.append(now)
            while conn.invalid_at and now - conn.invalid_at[0] > cfg.invalid_frames_window:
                conn.invalid_at.popleft()
            if len(conn.invalid_at) >= cfg.invalid_frames_limit:
                svc.metrics.ws_dropped.labels("invalid_frames").inc()
                conn.close(
                    int(CloseCode.TOO_MANY_INVALID_FRAMES),
                    close_reason(CloseCode.TOO_MANY_INVALID_FRAMES),
                )
                return
            continue
        frames.labels("in", frame.type.value).inc()
        trace_id = frame.trace_id or new_trace_id()
        try:
            await _dispatch(
                svc, turns, conn, cfg, frame.type, frame.data, frame.request_id, trace_id
            )
        except ProtocolError as err:
            if err.request_id is None:
                err.request_id = frame.request_id
            _reply_error(svc, conn, err, trace_id)
        except Exception:
            # A fault of ours (database down, a bug): say so, keep the connection.
            log.exception(
                "ws_dispatch_failed", traceId=trace_id, userId=conn.user_id, type=frame.type.value
            )
            _reply_error(
                svc,
                conn,
                ProtocolError(
                    ErrorCode.SERVER_ERROR, "internal error; retry", request_id=frame.request_id
                ),
                trace_id,
            )


def _reply_error(svc: Services, conn: Connection, err: ProtocolError, trace_id: str) -> None:
    svc.metrics.errors.labels(err.error_class.value, err.code.value).inc()
    conn.outbox.push_frame(encode_error(err, trace_id=trace_id), ServerType.ERROR)


async def _check_session(
    svc: Services, conn: Connection, request_id: str | None, trace_id: str
) -> bool:
    """Every frame that starts work re-checks the deny-list (revocation within seconds).

    A revoked session or an expired token: the error goes out first, then the close.
    """
    if await is_session_denied(svc, conn.session_id):
        err, code = (
            ProtocolError(ErrorCode.AUTH_INVALID, "session revoked"),
            CloseCode.TOKEN_INVALID,
        )
    elif conn.claims.exp <= time.time():
        err, code = (
            ProtocolError(ErrorCode.AUTH_EXPIRED, "access token expired; refresh it"),
            CloseCode.TOKEN_EXPIRED,
        )
    else:
        return True
    err.request_id = request_id
    _reply_error(svc, conn, err, trace_id)
    conn.close(int(code), close_reason(code))
    return False


async def _dispatch(
    svc: Services,
    turns: TurnManager,
    conn: Connection,
    cfg: WsConfig,
    type_: ClientType,
    data: Any,
    request_id: str | None,
    trace_id: str,
) -> None:
    if type_ is ClientType.PING:
        _push(conn, ServerType.PONG, {}, request_id, trace_id)
        return
    if type_ is ClientType.AUTH_REFRESH:
        assert isinstance(data, AuthRefresh)
        try:
            principal = await authenticate(svc, data.accessToken)
        except ApiError as exc:
            code = ErrorCode.AUTH_EXPIRED if exc.code == "AUTH_EXPIRED" else ErrorCode.AUTH_INVALID
            raise ProtocolError(code, exc.message) from exc
        if principal.user_id != conn.user_id:
            raise ProtocolError(ErrorCode.AUTH_INVALID, "the new token is for another user")
        conn.claims, conn.session_id = principal.claims, principal.session_id
        _push(conn, ServerType.SESSION_READY, _ready_data(svc, conn), request_id, trace_id)
        return
    if not await _check_session(svc, conn, request_id, trace_id):
        return
    if type_ is ClientType.CHAT_SEND and svc.draining.is_set():
        raise ProtocolError(
            ErrorCode.SERVER_DRAINING,
            "this server is restarting; reconnect and send again",
            retry_after_ms=cfg.drain_reconnect_ms,
        )
    listener = Listener(conn.outbox, request_id, trace_id)
    if type_ is ClientType.CHAT_SEND:
        assert isinstance(data, ChatSend)
        try:
            allowed, retry_after = await svc.cache.hit_rate(
                f"rl:send:{conn.user_id}", svc.settings.chat_sends_per_user_per_minute, 60
            )
        except CacheError:
            allowed, retry_after = True, 0.0
        if not allowed:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many messages; slow down",
                retry_after_ms=max(1, int(retry_after * 1000)),
            )
        await turns.send(user_id=conn.user_id, data=data, listener=listener)
    elif type_ is ClientType.CHAT_CANCEL:
        assert isinstance(data, ChatCancel)
        if not turns.cancel(
            user_id=conn.user_id,
            conversation_id=str(data.conversationId),
            message_id=str(data.messageId),
        ):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in flight")
    elif type_ is ClientType.CHAT_RESUME:
        assert isinstance(data, ChatResume)
        await turns.resume(user_id=conn.user_id, data=data, listener=listener)
