"""The ``/ws`` endpoint: the handshake (:mod:`.admission`), then one nursery whose body
reads and whose one child task writes (a decided close gives the nursery a deadline: the
writer's grace to deliver it); one instance-wide sweeper checks the connections'
deadlines as they come (:class:`~server.ws.hub.Hub` keeps them in slots). Each task an
idle socket keeps costs memory for the socket's whole life (benchmarks/README.md, idle
sockets), hence no more of them.

Only the writer writes to the socket. Everything else (replies, turn frames,
the close) is pushed to the connection's :class:`~server.ws.outbox.Outbox` or set
as the close to perform; the writer drains the outbox and then closes.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import suppress

import trio

from protocol.close_codes import CloseCode, close_reason
from protocol.codec import new_trace_id, parse_client_frame
from protocol.errors import ErrorCode, ProtocolError
from protocol.outgoing import ReplyTo
from server.auth.identity import note_activity
from server.health import ALIVE_PREFIX
from server.load import LoadMonitor
from server.logging import get_logger
from server.services import Services
from server.turns import TurnManager
from server.ws import session_log
from server.ws.admission import (
    PRESENCE_TTL,
    admit,
    leave_presence,
    presence_key,
    presence_member,
)
from server.ws.asgi import Disconnected, WebSocket
from server.ws.dispatch import Dispatcher
from server.ws.hub import MAX_AHEAD, Hub
from server.ws.state import Connection, WsConfig
from store.cache import CacheError

__all__ = [
    "Connection",
    "WsConfig",
    "check_connection",
    "handle_websocket",
    "next_check",
    "sweep_connections",
]

log = get_logger("parley.ws")


async def handle_websocket(
    svc: Services,
    hub: Hub,
    turns: TurnManager,
    cfg: WsConfig,
    load: LoadMonitor,
    dispatcher: Dispatcher,
    ws: WebSocket,
) -> None:
    """The whole life of one WebSocket, from the HTTP upgrade to the close."""
    conn = await admit(svc, ws, hub, cfg)
    if conn is None:
        return
    started = session_log.started(conn, ws.headers.get("traceparent"))
    # session.ready is the first frame: queued before the connection is in the hub, where
    # a drain (server.draining) or a revocation could reach it
    conn.outbox.push_frame(dispatcher.ready_frame(conn, ReplyTo.unsolicited()))
    hub.add(conn)
    svc.metrics.ws_connections.inc()
    try:
        try:
            async with trio.open_nursery() as nursery:
                scope = conn.scope = nursery.cancel_scope
                if conn.close_by is not None:  # closed before the scope existed
                    scope.deadline = conn.close_by
                nursery.start_soon(_writer, svc, load, conn, cfg, ws, scope)
                # bookkeeping beside the connection: a slow cache or database must not
                # hold up session.ready or the client's first frames
                nursery.start_soon(_note_activity, svc, conn.user_id)
                await _reader(svc, dispatcher, conn, cfg, ws, scope)
        except Exception:
            log.exception("ws_connection_failed", userId=conn.user_id, connectionId=conn.id)
            svc.metrics.ws_dropped.labels("server_error").inc()
            with trio.move_on_after(2):
                await ws.close(int(CloseCode.INTERNAL), "SERVER_ERROR")
    finally:
        hub.remove(conn)
        turns.detach(conn.outbox)
        conn.outbox.close()
        svc.metrics.ws_connections.dec()
        await leave_presence(svc, presence_key(conn.user_id), presence_member(svc, conn.id))
        session_log.ended(conn, started)


async def _note_activity(svc: Services, user_id: str) -> None:
    with suppress(Exception):
        await note_activity(svc, user_id)


async def _writer(
    svc: Services,
    load: LoadMonitor,
    conn: Connection,
    cfg: WsConfig,
    ws: WebSocket,
    scope: trio.CancelScope,
) -> None:
    """The only task that writes to the socket: the frames, the pings the sweeper marks
    due (checked before each wait, with no await in between, so a wake is never lost),
    and the close once the queue is sent."""
    frames = svc.metrics.ws_frames
    out = svc.metrics.ws_frames_out  # metric children by frame type (labels() costs per call)
    relay = svc.metrics.relay_seconds
    outbox = conn.outbox
    send = ws.send
    linger = cfg.coalesce_seconds
    heartbeat = conn.heartbeat
    while True:
        if heartbeat is not None and heartbeat.ping_due:
            await heartbeat.send_due_ping()
        if linger > 0 and load.under_pressure and not conn.closing:
            head = outbox.head_timing()
            # Wait only for a message whose next delta is due within the window.
            if head is not None and head[1] < linger:
                wait = head[0] + linger - time.perf_counter()
                if wait > 0:
                    await trio.sleep(wait)
        item = outbox.pop()
        if item is None:
            if conn.closing:
                break
            await outbox.wait()
            continue
        frame, t0 = item
        await send(frame.text)
        conn.chars_out += len(frame.text)
        counter = out.get(frame.type)
        if counter is None:
            counter = out[frame.type] = frames.labels("out", frame.type)
        counter.inc()
        if t0 is not None:
            relay.observe(time.perf_counter() - t0)
        del item, frame, counter  # an idle writer keeps no frame alive
    await ws.close(conn.close_code or 1000, conn.close_reason)
    scope.cancel()


async def _reader(
    svc: Services,
    dispatcher: Dispatcher,
    conn: Connection,
    cfg: WsConfig,
    ws: WebSocket,
    scope: trio.CancelScope,
) -> None:
    frames = svc.metrics.ws_frames
    while not conn.closing:
        try:
            raw = await ws.receive()
        except Disconnected:  # the peer is gone: nothing left to write to
            scope.cancel()
            return
        conn.chars_in += len(raw or "")
        try:
            # an empty binary frame arrives as None (Quart reads ``bytes or text``)
            if raw is None or isinstance(raw, bytes):
                raise ProtocolError(ErrorCode.VALIDATION_FAILED, "text frames only")
            frame = parse_client_frame(
                raw, max_frame_bytes=cfg.max_frame_bytes, max_content_chars=cfg.max_content_chars
            )
        except ProtocolError as err:
            frames.labels("in", "invalid").inc()
            if err.close_code is not None:  # over the frame limit: no reply, close 1009
                svc.metrics.ws_dropped.labels("frame_too_big").inc()
                conn.close(int(err.close_code), err.code.value)
                return
            dispatcher.reply_error(conn, err, ReplyTo(None, new_trace_id()))
            if _too_many_invalid(conn, cfg):
                svc.metrics.ws_dropped.labels("invalid_frames").inc()
                code = CloseCode.TOO_MANY_INVALID_FRAMES
                conn.close(int(code), close_reason(code))
                return
            continue
        frames.labels("in", frame.type.value).inc()
        reply = ReplyTo(frame.request_id, frame.trace_id or conn.trace_id or new_trace_id())
        session_log.frame(reply.request_id, reply.trace_id)
        try:
            await dispatcher.dispatch(conn, frame, reply)
        except ProtocolError as err:
            dispatcher.reply_error(conn, err, reply)
        except Exception:
            # A fault of ours (database down, a bug): say so, keep the connection.
            log.exception(
                "ws_dispatch_failed",
                traceId=reply.trace_id,
                userId=conn.user_id,
                type=frame.type.value,
            )
            fault = ProtocolError(ErrorCode.SERVER_ERROR, "internal error; retry")
            dispatcher.reply_error(conn, fault, reply)


def _too_many_invalid(conn: Connection, cfg: WsConfig) -> bool:
    """The invalid-frame rule: ``invalid_frames_limit`` within ``invalid_frames_window``."""
    now = trio.current_time()
    if conn.invalid_at is None:
        conn.invalid_at = deque()
    conn.invalid_at.append(now)
    while conn.invalid_at and now - conn.invalid_at[0] > cfg.invalid_frames_window:
        conn.invalid_at.popleft()
    return len(conn.invalid_at) >= cfg.invalid_frames_limit


def check_connection(
    svc: Services,
    conn: Connection,
    cfg: WsConfig,
    now: float,
    wall: float | None = None,
    mono: float | None = None,
) -> None:
    """Pong deadline, token expiry, slow consumer: each one closes the connection; else a
    ping that has become due wakes the writer to send it. ``now`` is trio's clock;
    ``wall`` and ``mono``, ``time.time()`` and ``time.monotonic()`` when the caller read
    them once for many connections."""
    if conn.closing:
        return
    if mono is None:
        mono = time.monotonic()
    heartbeat = conn.heartbeat
    if heartbeat is not None and heartbeat.overdue(cfg.pong_timeout, mono):
        svc.metrics.ws_dropped.labels("pong_timeout").inc()
        conn.close(int(CloseCode.INTERNAL), "PING_TIMEOUT")
    elif conn.claims.exp <= (time.time() if wall is None else wall):
        svc.metrics.ws_dropped.labels("token_expired").inc()
        conn.close(int(CloseCode.TOKEN_EXPIRED), close_reason(CloseCode.TOKEN_EXPIRED))
    elif conn.outbox.over_since is not None and now - conn.outbox.over_since >= cfg.stall_timeout:
        svc.metrics.ws_dropped.labels("slow_consumer").inc()
        conn.outbox.drop_queued()
        conn.close(int(CloseCode.SLOW_CONSUMER), close_reason(CloseCode.SLOW_CONSUMER))
    elif heartbeat is not None and heartbeat.schedule(cfg.ping_interval, mono):
        conn.outbox.wake()


def next_check(conn: Connection, cfg: WsConfig, now: float, wall: float, mono: float) -> float:
    """When (trio's clock, ``now`` being ``wall`` and ``mono`` on the others) the sweeper
    is to look at ``conn`` again: its pong's deadline, its next ping, its token's expiry,
    whichever comes first, and :data:`~server.ws.hub.MAX_AHEAD` at the latest. A slow
    consumer is not in it: the outbox going over its bound has the hub watch it."""
    at = min(MAX_AHEAD, conn.claims.exp - wall)
    heartbeat = conn.heartbeat
    if heartbeat is not None:
        at = min(at, heartbeat.last_ping + cfg.ping_interval - mono)
        if heartbeat.outstanding_since is not None:
            at = min(at, heartbeat.outstanding_since + cfg.pong_timeout - mono)
    return now + at


async def sweep_connections(
    svc: Services, hub: Hub, cfg: WsConfig, every: float | None = None
) -> None:
    """One task looks at the instance's connections every ``every`` seconds
    (``cfg.sweep_seconds`` by default) and marks the pings that are due: an idle socket
    never wakes up on a timer of its own (10,000 per-connection timers cost most of a
    core), so its pings go out a sweep late at most. A sweep looks only at the
    connections whose next deadline has come, the new ones and those over their outbox
    bound (:meth:`Hub.due`), each then scheduled for its next (:func:`next_check`).
    Every ``PRESENCE_TTL / 3`` it also renews this instance's sockets in the
    cluster-wide per-user count."""
    if every is None:
        every = cfg.sweep_seconds
    next_presence = trio.current_time() + PRESENCE_TTL / 3
    while True:
        await trio.sleep(every)
        now, wall, mono = trio.current_time(), time.time(), time.monotonic()
        for conn in hub.due(now):
            check_connection(svc, conn, cfg, now, wall, mono)
            if conn.closing or conn.outbox.over_since is None:
                hub.unwatch(conn)
            if not conn.closing:
                hub.schedule(conn, next_check(conn, cfg, now, wall, mono))
        if now >= next_presence:
            next_presence = now + PRESENCE_TTL / 3
            await renew_presence(svc, hub)


async def renew_presence(svc: Services, hub: Hub) -> None:
    by_user: dict[str, list[str]] = {}
    for conn in hub.all():
        by_user.setdefault(conn.user_id, []).append(presence_member(svc, conn.id))
    try:
        await svc.cache.presence_renew(
            {presence_key(user_id): members for user_id, members in by_user.items()},
            ttl=PRESENCE_TTL,
            alive_prefix=ALIVE_PREFIX,
        )
    except CacheError:
        log.warning("presence_renew_failed")
