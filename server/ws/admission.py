"""The WebSocket handshake: what is refused before the upgrade, and who is connecting after it.

Before accepting: draining (503), a foreign ``Origin`` (403), no ``chat.v1``
subprotocol (400), too many upgrades from the address (429) — each with a
message that says what to change. After accepting with ``chat.v1`` (so a
browser can read the close code): the bearer token (close 4001 or 4500), the
instance's cap (1013) and the user's cap (4504).
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from typing import Any, NoReturn

import trio

from protocol.close_codes import CloseCode, close_reason
from protocol.errors import AUTH_CLOSE_CODES, ErrorCode, ProtocolError
from server.auth.identity import UNREAD, Principal, authenticate, deny_key, verify_token
from server.auth.tokens import AccessClaims
from server.errors import ApiError
from server.health import ALIVE_PREFIX
from server.logging import get_logger
from server.net import forwarded_ip
from server.services import Services
from server.ws import session_log
from server.ws.asgi import WebSocket
from server.ws.heartbeat import SCOPE_KEY
from server.ws.hub import Hub
from server.ws.outbox import Outbox
from server.ws.state import Connection, WsConfig
from store.cache import CacheError

__all__ = [
    "BEARER_PREFIX",
    "PRESENCE_TTL",
    "SUBPROTOCOL",
    "admit",
    "leave_presence",
    "presence_key",
    "presence_member",
]

log = get_logger("parley.ws")

SUBPROTOCOL = "chat.v1"
BEARER_PREFIX = "bearer."
PRESENCE_TTL = 60.0  # seconds; each instance refreshes its sockets every PRESENCE_TTL / 3


def _client_ip(svc: Services, websocket: WebSocket) -> str:
    ip = forwarded_ip(
        websocket.headers.get("x-forwarded-for", ""),
        websocket.remote_addr,
        trust_proxy=svc.settings.trust_proxy_headers,
    )
    return ip or ""


async def _refuse_before_upgrade(
    svc: Services, websocket: WebSocket, deny: str | None, join: tuple[str, str] | None
) -> tuple[Any, int | None]:
    """HTTP refusals: they happen before the upgrade, as plain HTTP answers. With the
    address's upgrade count, the same cache round trip reads ``deny`` (the token's
    deny-list key, when it has a valid token) and adds the socket to its user's count
    (``join``: key and member, the same condition). Returns the deny-list value
    (``UNREAD`` if not read) and the user's sockets counting this one (None if not
    counted); a socket refused here is taken out of the count again."""
    if svc.draining.is_set():
        _refuse("SERVICE_UNAVAILABLE", "this server is draining; reconnect to another instance")
    origin = websocket.headers.get("origin")
    if origin is not None and origin.rstrip("/") not in svc.settings.origins:
        _refuse(
            "FORBIDDEN",
            f"WebSocket origin {origin[:200]!r} is not allowed; "
            "the server's operator can add it to PARLEY_ALLOWED_ORIGINS",
        )
    if SUBPROTOCOL not in websocket.requested_subprotocols:
        _refuse(
            "VALIDATION_FAILED",
            f"offer the WebSocket subprotocol {SUBPROTOCOL!r} "
            f"(with '{BEARER_PREFIX}<access token>' beside it)",
        )
    cached: Any = UNREAD
    alive: int | None = None
    rate = (f"rl:wsup:{_client_ip(svc, websocket)}", svc.settings.ws_upgrades_per_ip_per_hour)
    keys = [deny] if deny is not None else []
    try:
        if join is None:
            allowed, retry, values = await svc.cache.hit_rate_and_get(*rate, 3600, keys)
        else:
            allowed, retry, values, alive = await svc.cache.hit_rate_and_join(
                *rate, 3600, keys, *join, PRESENCE_TTL, alive_prefix=ALIVE_PREFIX
            )
        if deny is not None:
            cached = values[0]
    except CacheError:
        allowed, retry = True, 0.0
    if not allowed:  # 429 with Retry-After, like every REST limit
        if join is not None and alive is not None:
            await leave_presence(svc, *join)
        session_log.refused(status=429, reason="RATE_LIMITED")
        raise ApiError(
            "RATE_LIMITED",
            "too many WebSocket upgrades from this address; retry later",
            retry_after=max(1.0, retry),
        )
    return cached, alive


def presence_key(user_id: str) -> str:
    """The user's open sockets on every instance (``CacheEngine.presence_add``)."""
    return f"conns:{user_id}"


def presence_member(svc: Services, conn_id: str) -> str:
    """A socket in that set: ``<instance id>|<connection id>``."""
    return f"{svc.instance_id}|{conn_id}"


async def _over_user_cap(
    svc: Services, hub: Hub, cfg: WsConfig, user_id: str, conn_id: str, alive: int | None
) -> bool:
    """Count this socket among the user's sockets on every instance (``alive``: counted
    already, with the upgrade); over the cap, it does not count and is refused. The
    sockets of an instance that died stop counting when its heartbeat expires
    (``server.health``: seconds), not after ``PRESENCE_TTL``. Without the cache, this
    instance's own count decides."""
    key, member = presence_key(user_id), presence_member(svc, conn_id)
    try:
        count = alive
        if count is None:
            count = await svc.cache.presence_add(
                key, [member], ttl=PRESENCE_TTL, alive_prefix=ALIVE_PREFIX
            )
        if count > cfg.max_connections_per_user:
            await svc.cache.presence_remove(key, member)
            return True
        return False
    except CacheError:
        return hub.count_for_user(user_id) >= cfg.max_connections_per_user


async def leave_presence(svc: Services, key: str, member: str) -> None:
    """Take a socket out of its user's count now (shielded: it runs on the way out of a
    cancelled handshake or connection too; unreachable, the entry expires by itself)."""
    with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(CacheError):
        await svc.cache.presence_remove(key, member)


async def _close(
    svc: Services, websocket: WebSocket, code: CloseCode, reason: str, dropped: str
) -> None:
    svc.metrics.ws_dropped.labels(dropped).inc()
    session_log.refused(close_code=int(code), reason=reason)
    await websocket.close(int(code), reason)


def _refuse(code: str, message: str) -> NoReturn:
    """Refuse the upgrade with a plain HTTP answer (``message`` says what to change)."""
    err = ApiError(code, message)
    session_log.refused(status=err.status, reason=message)
    raise err


async def admit(svc: Services, websocket: WebSocket, hub: Hub, cfg: WsConfig) -> Connection | None:
    """Run the handshake; the connection to serve, or None when it was refused (and closed)."""
    offered = websocket.requested_subprotocols
    token = next((p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), "")
    # The token is checked now (signature and expiry: no I/O), so that its deny-list entry
    # and its user's socket count come with the upgrade count; what is wrong with it is
    # said after accepting.
    claims: AccessClaims | None = None
    refusal: Exception | None = None
    try:
        if not token:
            raise ProtocolError(ErrorCode.AUTH_INVALID, "no bearer subprotocol")
        claims = verify_token(svc, token)
    except Exception as exc:  # said after accepting (a fault of ours: SERVER_ERROR)
        refusal = exc
    conn_id = uuid.uuid4().hex
    join = None
    if claims is not None:
        join = (presence_key(claims.sub), presence_member(svc, conn_id))
    admitted: Connection | None = None
    alive: int | None = None
    try:
        cached, alive = await _refuse_before_upgrade(
            svc, websocket, deny_key(claims.sid) if claims else None, join
        )
        conn = await _after_upgrade(
            svc, websocket, hub, cfg, conn_id, token, claims, refusal, cached
        )
        if conn is not None and await _over_user_cap(svc, hub, cfg, conn.user_id, conn_id, alive):
            alive = None  # over the cap: it took the socket out itself
            code = CloseCode.TOO_MANY_CONNECTIONS
            await _close(svc, websocket, code, close_reason(code), "user_limit")
        elif conn is not None:
            admitted = conn
        return admitted
    finally:
        if admitted is None and join is not None and alive is not None:  # refused, or failed
            await leave_presence(svc, *join)


async def _after_upgrade(
    svc: Services,
    websocket: WebSocket,
    hub: Hub,
    cfg: WsConfig,
    conn_id: str,
    token: str,
    claims: AccessClaims | None,
    refusal: Exception | None,
    cached: Any,
) -> Connection | None:
    """Accept with ``chat.v1``, then authenticate (so the browser can read the close
    code) and check the instance's cap. None when refused (and closed)."""
    await websocket.accept(subprotocol=SUBPROTOCOL)
    principal: Principal
    try:
        if refusal is not None:
            raise refusal
        principal = await authenticate(svc, token, claims=claims, cached=cached)
    except ProtocolError as exc:
        code = AUTH_CLOSE_CODES.get(exc.code, CloseCode.TOKEN_INVALID)
        await _close(svc, websocket, code, close_reason(code), "auth")
        return None
    except Exception:
        log.exception("ws_auth_failed")
        await _close(svc, websocket, CloseCode.INTERNAL, "SERVER_ERROR", "server_error")
        return None
    if hub.count() >= cfg.max_connections:
        code = CloseCode.TRY_AGAIN_LATER
        await _close(svc, websocket, code, close_reason(code), "instance_full")
        return None
    return Connection(
        id=conn_id,
        user_id=principal.user_id,
        session_id=principal.session_id,
        claims=principal.claims,
        heartbeat=websocket.scope.get(SCOPE_KEY),
        outbox=Outbox(max_frames=cfg.outbox_max_frames, max_bytes=cfg.outbox_max_bytes),
    )
