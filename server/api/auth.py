"""Auth and account routes: register, login, guest, upgrade, refresh, logout, sessions, me."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, g, request
from sqlalchemy.engine import Connection

from server.api.common import app_nursery, client_ip, parse_body, require_principal, services
from server.api.schemas import (
    Credentials,
    GuestBody,
    LogoutBody,
    RefreshBody,
    Registration,
    user_json,
)
from server.auth.identity import note_active, note_live_session, revoke_sessions
from server.auth.password_policy import password_problem
from server.auth.tokens import hash_refresh_token, new_refresh_token
from server.errors import ApiError
from server.services import Services
from store import sessions as sessions_repo
from store import users as users_repo
from store.audit import email_subject, record_event
from store.cache import CacheError
from store.records import SessionRecord, UserKind, UserRecord
from store.signups import guest_signup

__all__ = ["bp"]

bp = Blueprint("auth", __name__)


def _trace() -> str | None:
    return g.get("trace_id")


def _refresh_ttl(svc: Services, kind: str) -> dt.timedelta:
    s = svc.settings
    secs = (
        s.guest_refresh_token_ttl_seconds if kind == UserKind.GUEST else s.refresh_token_ttl_seconds
    )
    return dt.timedelta(seconds=secs)


def _token_answer(
    svc: Services, user: UserRecord, session_id: str, refresh: str, *, with_user: bool = True
) -> dict[str, Any]:
    access, _ = svc.keyring.issue(
        user_id=user.id, session_id=session_id, kind=user.kind, role=user.role
    )
    body: dict[str, Any] = {
        "accessToken": access,
        "refreshToken": refresh,
        "accessTokenExpiresIn": svc.keyring.ttl_seconds,
    }
    if with_user:
        body["user"] = user_json(user)
    return body


async def _rate_limit(svc: Services, key: str, limit: int, window: int, what: str) -> None:
    try:
        allowed, retry_after = await svc.cache.hit_rate(key, limit, window)
    except CacheError:
        return  # fail open on limits rather than lock everyone out; logged by the caller
    if not allowed:
        raise ApiError(
            "RATE_LIMITED", f"too many {what}; retry later", retry_after=max(1.0, retry_after)
        )


def _check_password(password: str, email: str | None) -> None:
    problem = password_problem(password, email)
    if problem is not None:
        raise ApiError("VALIDATION_FAILED", problem)


async def _new_session(
    svc: Services, user: UserRecord | Callable[[Connection], UserRecord]
) -> tuple[UserRecord, str, str]:
    """A new session for ``user``, or for the user ``user(conn)`` creates in the same
    transaction (a sign-up: one transaction, and a new user has no sessions to evict);
    past ``max_sessions_per_user`` live ones, the oldest are revoked."""
    refresh = new_refresh_token()
    cap = svc.settings.max_sessions_per_user
    evicted: list[str] = []
    ua = request.headers.get("User-Agent")
    ip = client_ip()

    def work(conn: Connection) -> tuple[UserRecord, str]:
        new = callable(user)
        owner = user(conn) if callable(user) else user
        sess = sessions_repo.create_session(
            conn,
            user_id=owner.id,
            refresh_hash=hash_refresh_token(refresh),
            ttl=_refresh_ttl(svc, owner.kind),
            user_agent=ua,
            ip=ip,
        )
        record_event(
            conn,
            action="login",
            subject_id=owner.id,
            actor_id=owner.id,
            ip=ip,
            trace_id=_trace(),
            details={"sessionId": sess.id, "kind": owner.kind},
        )
        if not new:
            evicted[:] = sessions_repo.revoke_oldest_sessions(
                conn, owner.id, keep=cap, reason="session_cap"
            )
        return owner, sess.id

    owner, sid = await svc.db.tx(work)
    note_live_session(svc, sid)  # its first connect needs no database read
    if callable(user):
        note_active(svc, owner.id)  # created active now: no activity touch for an hour
    if evicted:
        await revoke_sessions(svc, evicted)
    return owner, sid, refresh


@bp.post("/auth/register")
async def register() -> tuple[dict[str, Any], int]:
    svc = services()
    body = await parse_body(Registration)
    await _rate_limit(
        svc,
        f"rl:signup:{client_ip()}",
        svc.settings.signups_per_ip_per_hour,
        3600,
        "sign-ups from this address",
    )
    _check_password(body.password, body.email)
    pw_hash = await svc.passwords.hash(body.password)
    ip = client_ip()

    def work(conn: Connection) -> UserRecord:
        user = users_repo.create_user(
            conn,
            kind=UserKind.REGISTERED.value,
            email=body.email,
            password_hash=pw_hash,
            display_name=body.displayName,
        )
        record_event(
            conn, action="register", subject_id=user.id, actor_id=user.id, ip=ip, trace_id=_trace()
        )
        return user

    try:
        user, sid, refresh = await _new_session(svc, work)
    except users_repo.EmailTaken as exc:
        raise ApiError("EMAIL_TAKEN", "an account with this email exists") from exc
    return _token_answer(svc, user, sid, refresh), 201


@bp.post("/auth/guest")
async def guest() -> tuple[dict[str, Any], int]:
    svc = services()
    body = await parse_body(GuestBody, optional=True)
    ip = client_ip()
    await _rate_limit(
        svc,
        f"rl:signup:{ip}",
        svc.settings.signups_per_ip_per_hour,
        3600,
        "sign-ups from this address",
    )
    refresh = new_refresh_token()
    signup = guest_signup(
        display_name=body.displayName,
        refresh_hash=hash_refresh_token(refresh),
        ttl=_refresh_ttl(svc, UserKind.GUEST),
        user_agent=request.headers.get("User-Agent"),
        ip=ip,
        trace_id=_trace(),
    )
    # sign-ups that arrive together share one transaction: a burst costs a few commits
    await svc.guest_signups.submit(app_nursery(), signup)
    note_live_session(svc, signup.session.id)  # its first connect needs no database read
    note_active(svc, signup.user.id)  # created active now: no activity touch for an hour
    return _token_answer(svc, signup.user, signup.session.id, refresh), 201


@bp.post("/auth/login")
async def login() -> dict[str, Any]:
    svc = services()
    s = svc.settings
    body = await parse_body(Credentials)
    ip = client_ip()
    acct_key = f"lf:acct:{email_subject(body.email)}"
    ip_key = f"lf:ip:{ip}"
    window = s.login_failure_window_seconds
    # Count the attempt before verifying it, atomically, so parallel guesses cannot slip
    # past the limit while argon2 runs; a success takes its attempt back.
    try:
        acct_n = await svc.cache.incr(acct_key, ttl=window)
        ip_n = await svc.cache.incr(ip_key, ttl=window)
    except CacheError:
        acct_n = ip_n = 0  # fail open: the limits need the cache
    over = [
        (k, n)
        for k, n, lim in (
            (acct_key, acct_n, s.login_failures_per_account),
            (ip_key, ip_n, s.login_failures_per_ip),
        )
        if n > lim
    ]
    if over:
        retry_after = 1.0
        with contextlib.suppress(CacheError):
            retry_after = max([await svc.cache.ttl(k) or 1.0 for k, _ in over])
        raise ApiError(
            "RATE_LIMITED", "too many failed logins; retry later", retry_after=max(1.0, retry_after)
        )
    user = await svc.db.read(lambda c: users_repo.get_user_by_email(c, body.email))
    ok = await svc.passwords.verify(user.password_hash if user else None, body.password)
    if not ok or user is None:
        svc.metrics.login_failures.inc()
        subject = user.id if user else email_subject(body.email)
        await svc.db.tx(
            lambda c: record_event(
                c, action="login_failure", subject_id=subject, ip=ip, trace_id=_trace()
            )
        )
        raise ApiError("INVALID_CREDENTIALS", "wrong email or password")
    with contextlib.suppress(CacheError):
        await svc.cache.delete(acct_key)
        await svc.cache.incr(ip_key, -1)
    # Successful logins are limited too (each one is a session): only someone who knows
    # the password gets here, so this says nothing about the account to anyone else.
    await _rate_limit(
        svc, f"rl:login:{user.id}", s.logins_per_account_per_hour, 3600, "logins to this account"
    )
    user, sid, refresh = await _new_session(svc, user)
    return _token_answer(svc, user, sid, refresh)


@bp.post("/auth/upgrade")
async def upgrade() -> dict[str, Any]:
    svc = services()
    principal = await require_principal()
    body = await parse_body(Registration)
    # Cheap checks first, argon2 last: the caller is still a guest (the database's word,
    # not the token's), then the per-IP sign-up budget and the per-user upgrade budget.
    current = await svc.db.read(lambda c: users_repo.get_user(c, principal.user_id))
    if current is None:
        raise ApiError("AUTH_INVALID", "account no longer exists")
    if current.kind != UserKind.GUEST:
        raise ApiError("CONFLICT", "only a guest account can be upgraded")
    await _rate_limit(
        svc,
        f"rl:signup:{client_ip()}",
        svc.settings.signups_per_ip_per_hour,
        3600,
        "sign-ups from this address",
    )
    await _rate_limit(
        svc,
        f"rl:upgrade:{principal.user_id}",
        svc.settings.upgrades_per_user_per_hour,
        3600,
        "upgrade attempts",
    )
    _check_password(body.password, body.email)
    pw_hash = await svc.passwords.hash(body.password)
    refresh = new_refresh_token()
    ip = client_ip()

    def work(conn: Connection) -> UserRecord:
        user = users_repo.upgrade_guest(
            conn,
            principal.user_id,
            email=body.email,
            password_hash=pw_hash,
            display_name=body.displayName,
        )
        if user is None:
            raise ApiError("CONFLICT", "only a guest account can be upgraded")
        sess = sessions_repo.get_session(conn, principal.session_id)
        # A registered user's session lives 30 days: rotate its refresh token now.
        if sess is None or not sessions_repo.swap_refresh(
            conn,
            sess,
            new_hash=hash_refresh_token(refresh),
            ttl=_refresh_ttl(svc, UserKind.REGISTERED),
        ):
            raise ApiError("AUTH_INVALID", "session revoked")
        record_event(
            conn, action="upgrade", subject_id=user.id, actor_id=user.id, ip=ip, trace_id=_trace()
        )
        return user

    try:
        user = await svc.db.tx(work)
    except users_repo.EmailTaken as exc:
        raise ApiError("EMAIL_TAKEN", "an account with this email exists") from exc
    return _token_answer(svc, user, principal.session_id, refresh)


@bp.post("/auth/refresh")
async def refresh() -> dict[str, Any]:
    svc = services()
    body = await parse_body(RefreshBody)
    old_hash = hash_refresh_token(body.refreshToken)
    new = new_refresh_token()
    ip = client_ip()

    def work(conn: Connection) -> tuple[sessions_repo.RefreshResult, UserRecord | None]:
        owner: list[UserRecord] = []

        def ttl_for(sess: SessionRecord) -> dt.timedelta | None:
            user = users_repo.get_user(conn, sess.user_id)
            if user is None:  # account deleted
                return None
            owner.append(user)
            return _refresh_ttl(svc, user.kind)

        result = sessions_repo.rotate_refresh(
            conn, old_hash=old_hash, new_hash=hash_refresh_token(new), ttl_for=ttl_for
        )
        if result.outcome is sessions_repo.RefreshOutcome.REUSED and result.session:
            record_event(
                conn,
                action="token_reuse",
                subject_id=result.session.user_id,
                ip=ip,
                trace_id=_trace(),
                details={"sessionId": result.session.id},
            )
        rotated = result.outcome is sessions_repo.RefreshOutcome.ROTATED
        return result, (owner[0] if rotated and owner else None)

    result, user = await svc.db.tx(work)
    if result.outcome is sessions_repo.RefreshOutcome.REUSED:
        if result.session:
            await revoke_sessions(svc, [result.session.id])
        raise ApiError("TOKEN_REUSED", "refresh token already used; the session is revoked")
    if result.outcome is not sessions_repo.RefreshOutcome.ROTATED or user is None:
        raise ApiError("AUTH_INVALID", "refresh token invalid or expired")
    assert result.session is not None
    return _token_answer(svc, user, result.session.id, new)


@bp.post("/auth/logout")
async def logout() -> Response:
    svc = services()
    principal = await require_principal()
    await parse_body(LogoutBody, optional=True)
    ip = client_ip()

    def work(conn: Connection) -> None:
        sessions_repo.revoke_session(
            conn, principal.session_id, reason="logout", user_id=principal.user_id
        )
        record_event(
            conn,
            action="logout",
            subject_id=principal.user_id,
            actor_id=principal.user_id,
            ip=ip,
            trace_id=_trace(),
            details={"sessionId": principal.session_id},
        )

    await svc.db.tx(work)
    await revoke_sessions(svc, [principal.session_id])
    return Response(b"", status=204)


@bp.post("/auth/logout-all")
async def logout_all() -> Response:
    svc = services()
    principal = await require_principal()
    await parse_body(LogoutBody, optional=True)
    ip = client_ip()

    def work(conn: Connection) -> list[str]:
        ids = sessions_repo.revoke_all_sessions(conn, principal.user_id, reason="logout_all")
        record_event(
            conn,
            action="logout",
            subject_id=principal.user_id,
            actor_id=principal.user_id,
            ip=ip,
            trace_id=_trace(),
            details={"all": True, "sessions": len(ids)},
        )
        return ids

    ids = await svc.db.tx(work)
    await revoke_sessions(svc, sorted(set(ids) | {principal.session_id}))
    return Response(b"", status=204)
