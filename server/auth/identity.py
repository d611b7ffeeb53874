"""Who is calling, and whether that still holds: one place for REST and WebSocket alike.

- :func:`authenticate` verifies an access token (signature, key ring, expiry) and
  checks its session against the deny-list;
- :func:`revoke_sessions` deny-lists sessions on every instance and tells every
  instance's sockets of those sessions to close (:data:`REVOKE_CHANNEL`);
  :func:`watch_revocations` is the listening side;
- :func:`note_activity` keeps ``users.last_active_at`` fresh (guest expiry).

While the cache is down, revocations made here are kept in-process
(``Services.pending_denies``) until :func:`flush_pending_denies` hands them to the
cache, and :func:`is_session_denied` asks the database. The deny-list is a fast path,
never the only record: a session the cache has no entry for (a restart of the embedded
cache, a flushed Redis) is decided by the database (``sessions.revoked_at``,
``users.deleted_at``), remembered as live for ``session_check_cache_seconds``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from protocol.errors import ErrorCode, ProtocolError
from server.auth.tokens import AccessClaims, TokenExpired, TokenInvalid
from server.listen import listen_forever
from server.services import Services
from store.cache import CacheEngine, CacheError
from store.sessions import is_session_live
from store.users import touch_user

__all__ = [
    "ACTIVITY_EVERY",
    "REVOKE_CHANNEL",
    "UNREAD",
    "Principal",
    "authenticate",
    "deny_key",
    "flush_pending_denies",
    "is_session_denied",
    "note_active",
    "note_activity",
    "note_live_session",
    "note_revoked_session",
    "revoke_sessions",
    "session_known",
    "verify_token",
    "watch_revocations",
]

REVOKE_CHANNEL = "parley:revoked"
ACTIVITY_EVERY = 3600.0
LIVE_CACHE_MAX = 100_000  # sessions remembered as live per process (then forgotten at once)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    session_id: str
    kind: str
    role: str
    claims: AccessClaims


def deny_key(session_id: str) -> str:
    return f"deny:sid:{session_id}"


def note_live_session(svc: Services, session_id: str) -> None:
    """Remember a session as live for ``session_check_cache_seconds``: the database said so,
    or this process has just created it (its first connect then needs no database read).
    A revocation still wins: the deny-list is read first."""
    if len(svc.live_sessions) >= LIVE_CACHE_MAX:
        svc.live_sessions.clear()
    svc.live_sessions[session_id] = time.monotonic() + svc.settings.session_check_cache_seconds


UNREAD: Any = object()  # is_session_denied: the deny-list entry is not read yet


def session_known(svc: Services, session_id: str, cached: Any) -> bool | None:
    """What this process knows of a session without any I/O: True denied (revoked here and
    not yet on the deny-list, or on it: ``cached`` is its entry, read), False live (the
    database said so within ``session_check_cache_seconds``), None: only the database can
    tell (also when the deny-list could not be read, ``cached`` is ``UNREAD``)."""
    if session_id in svc.pending_denies:
        return True
    if cached is UNREAD:
        return None
    if cached is not None:
        return True
    until = svc.live_sessions.get(session_id)
    if until is not None and until > time.monotonic():
        return False
    return None


async def note_revoked_session(svc: Services, session_id: str) -> None:
    """The database called the session revoked: no longer remembered as live, and back on
    the deny-list (a cache that lost its entries must not send every call to the database)."""
    svc.live_sessions.pop(session_id, None)
    with contextlib.suppress(CacheError):
        ttl = svc.settings.access_token_ttl_seconds + 5
        await svc.cache.set(deny_key(session_id), b"1", ttl=ttl)


async def is_session_denied(svc: Services, session_id: str, cached: Any = UNREAD) -> bool:
    """Deny-list in the cache first; without an entry there, the database decides.

    Revocations made here while the cache was down are also kept in-process until they
    reach the cache (``Services.pending_denies``). A session the database calls live is
    remembered for ``session_check_cache_seconds`` (``Services.live_sessions``); one it
    calls revoked goes back on the deny-list, so a cache that lost its entries (restart,
    flush) neither revives a revoked session nor sends every call to the database.
    """
    if session_id in svc.pending_denies:
        return True
    try:
        if cached is UNREAD:  # (``cached``: the deny-list entry, read already)
            cached = await svc.cache.get(deny_key(session_id))
    except CacheError:
        return not await svc.db.read(lambda c: is_session_live(c, session_id))
    known = session_known(svc, session_id, cached)
    if known is not None:
        return known
    if await svc.db.read(lambda c: is_session_live(c, session_id)):
        note_live_session(svc, session_id)
        return False
    await note_revoked_session(svc, session_id)
    return True


def verify_token(svc: Services, token: str) -> AccessClaims:
    """Signature and expiry (no deny-list). Raises ``ProtocolError`` ``AUTH_EXPIRED`` or
    ``AUTH_INVALID``."""
    try:
        return svc.keyring.verify(token)
    except TokenExpired as exc:
        raise ProtocolError(ErrorCode.AUTH_EXPIRED, "access token expired; refresh it") from exc
    except TokenInvalid as exc:
        raise ProtocolError(ErrorCode.AUTH_INVALID, "access token invalid") from exc


async def authenticate(
    svc: Services, token: str, *, claims: AccessClaims | None = None, cached: Any = UNREAD
) -> Principal:
    """Verify an access token (signature, expiry, deny-list). ``claims``: the token,
    verified already (:func:`verify_token`); ``cached``: its deny-list entry, read already.

    Raises ``ProtocolError`` ``AUTH_EXPIRED`` or ``AUTH_INVALID``.
    """
    if claims is None:
        claims = verify_token(svc, token)
    if await is_session_denied(svc, claims.sid, cached):
        raise ProtocolError(ErrorCode.AUTH_INVALID, "session revoked")
    return Principal(claims.sub, claims.sid, claims.kind, claims.role, claims)


def note_active(svc: Services, user_id: str) -> None:
    """This process knows the user active now (it just created or touched them): for an
    hour, :func:`note_activity` asks neither the cache nor the database."""
    if len(svc.active_noted) >= LIVE_CACHE_MAX:
        svc.active_noted.clear()
    svc.active_noted[user_id] = time.monotonic() + ACTIVITY_EVERY


async def note_activity(svc: Services, user_id: str) -> None:
    """Keep ``users.last_active_at`` fresh (guests expire after days without activity):
    at most one write per user per hour, decided by the cache (and, within the hour,
    by what this process noted already)."""
    if svc.active_noted.get(user_id, 0.0) > time.monotonic():
        return
    note_active(svc, user_id)
    try:
        first = await svc.cache.set_if_absent(f"active:{user_id}", b"1", ttl=ACTIVITY_EVERY)
    except CacheError:
        return
    if first:
        await svc.db.tx(lambda c: touch_user(c, user_id))


async def revoke_sessions(svc: Services, session_ids: list[str]) -> None:
    """Deny-list revoked sessions (every instance sees it) and tell live sockets to close."""
    ttl = svc.settings.access_token_ttl_seconds + 5
    for sid in session_ids:
        svc.live_sessions.pop(sid, None)
    try:
        pipe = svc.cache.pipeline()
        for sid in session_ids:
            pipe.set(deny_key(sid), b"1", ttl=ttl)
            pipe.publish(REVOKE_CHANNEL, sid)
        await pipe.execute()
    except CacheError:
        # Kept in-process until the cache takes it (flush_pending_denies), and the database
        # says revoked too: is_session_denied() falls back to it while the cache is down.
        expiry = time.monotonic() + ttl
        for sid in session_ids:
            svc.pending_denies[sid] = expiry


async def flush_pending_denies(svc: Services) -> None:
    """Background: push revocations made while the cache was down, once it is back."""
    while True:
        await trio.sleep(1.0)
        if not svc.pending_denies:
            continue
        now = time.monotonic()
        for sid, expiry in list(svc.pending_denies.items()):
            if expiry <= now:
                del svc.pending_denies[sid]
        pending = dict(svc.pending_denies)
        try:
            pipe = svc.cache.pipeline()
            for sid, expiry in pending.items():
                pipe.set(deny_key(sid), b"1", ttl=max(1.0, expiry - now))
                pipe.publish(REVOKE_CHANNEL, sid)
            await pipe.execute()
        except CacheError:
            continue
        for sid in pending:
            svc.pending_denies.pop(sid, None)


async def watch_revocations(cache: CacheEngine, on_revoked: Callable[[str], object]) -> None:
    """Listen for revoked sessions from every instance and call ``on_revoked(session_id)``;
    resubscribe after a cache fault."""
    await listen_forever(cache, REVOKE_CHANNEL, on_revoked, name="revocation")
