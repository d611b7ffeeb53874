"""Request plumbing shared by every route: services, body parsing, the caller, the client IP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from quart import current_app, g, request

from server.auth.tokens import AccessClaims, TokenExpired, TokenInvalid
from server.errors import ApiError
from server.services import Services
from store.cache import CacheError
from store.db import utcnow

__all__ = [
    "Principal",
    "client_ip",
    "deny_key",
    "parse_body",
    "require_principal",
    "services",
]

M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024


def services() -> Services:
    return current_app.config["PARLEY_SERVICES"]


def forwarded_ip(header: str, remote_addr: str | None, *, trust_proxy: bool) -> str | None:
    """The client address. Behind a trusted proxy, the rightmost ``X-Forwarded-For`` entry:
    the one our proxy appended (entries to its left are whatever the client sent)."""
    if trust_proxy and header:
        last = header.rsplit(",", 1)[-1].strip()
        if last:
            return last[:45]
    return (remote_addr or "")[:45] or None


def client_ip() -> str | None:
    return forwarded_ip(
        request.headers.get("X-Forwarded-For", ""),
        request.remote_addr,
        trust_proxy=services().settings.trust_proxy_headers,
    )


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


async def parse_body(model: type[M], *, optional: bool = False) -> M:
    """Read, bound and validate a JSON body; 400 ``VALIDATION_FAILED`` on any fault."""
    raw = await request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError("PAYLOAD_TOO_LARGE", f"body over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if optional:
            return model()
        raise ApiError("VALIDATION_FAILED", "a JSON object body is required")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError("VALIDATION_FAILED", "body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ApiError("VALIDATION_FAILED", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError("VALIDATION_FAILED", _describe(exc)) from exc


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    session_id: str
    kind: str
    role: str
    claims: AccessClaims


def deny_key(session_id: str) -> str:
    return f"deny:sid:{session_id}"


async def is_session_denied(svc: Services, session_id: str) -> bool:
    """Deny-list in the cache; if the cache is down, ask the database (slower, still right).

    Revocations made here while the cache was down are also kept in-process until they
    reach the cache (``Services.pending_denies``), so a cache that comes back empty does
    not revive a revoked session on this instance.
    """
    if session_id in svc.pending_denies:
        return True
    try:
        return await svc.cache.get(deny_key(session_id)) is not None
    except CacheError:
        from store.sessions import get_session

        sess = await svc.db.read(lambda c: get_session(c, session_id))
        return sess is None or sess.revoked_at is not None or sess.expires_at <= utcnow()


async def authenticate(svc: Services, token: str) -> Principal:
    """Verify an access token (signature, expiry, deny-list). Raises ApiError."""
    try:
        claims = svc.keyring.verify(token)
    except TokenExpired as exc:
        raise ApiError("AUTH_EXPIRED", "access token expired; refresh it") from exc
    except TokenInvalid as exc:
        raise ApiError("AUTH_INVALID", "access token invalid") from exc
    if await is_session_denied(svc, claims.sid):
        raise ApiError("AUTH_INVALID", "session revoked")
    return Principal(claims.sub, claims.sid, claims.kind, claims.role, claims)


ACTIVITY_EVERY = 3600.0


async def note_activity(svc: Services, user_id: str) -> None:
    """Keep ``users.last_active_at`` fresh (guests expire after days without activity):
    at most one write per user per hour, decided by the cache."""
    try:
        first = await svc.cache.set_if_absent(f"active:{user_id}", b"1", ttl=ACTIVITY_EVERY)
    except CacheError:
        return
    if first:
        from store.users import touch_user

        await svc.db.tx(lambda c: touch_user(c, user_id))


async def require_principal() -> Principal:
    cached = g.get("principal")
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("AUTH_INVALID", "missing bearer token")
    svc = services()
    principal = await authenticate(svc, token.strip())
    g.principal = principal
    await note_activity(svc, principal.user_id)
    return principal
