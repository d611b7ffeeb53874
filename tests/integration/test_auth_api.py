"""Auth and account routes on both backends (SQLite + memory, MariaDB + Redis)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import trio

from store.schema import audit_events, sessions, users
from tests.support.api import ApiClient

V1 = "/api/v1"


async def count(api: ApiClient, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    q = sa.select(sa.func.count()).select_from(table)
    for w in where:
        q = q.where(w)
    return int(await api.svc.db.read(lambda c: c.execute(q).scalar_one()))


async def audit_actions(api: ApiClient, subject_id: str) -> list[str]:
    q = (
        sa.select(audit_events.c.action)
        .where(audit_events.c.subject_id == subject_id)
        .order_by(audit_events.c.id)
    )
    return [r[0] for r in await api.svc.db.read(lambda c: c.execute(q).all())]


async def test_register_login_me(api: ApiClient) -> None:
    acct = await api.register("Alice.Example@Example.com", "a good password")
    assert acct.user["email"] == "alice.example@example.com"
    assert acct.user["kind"] == "registered" and acct.user["role"] == "user"
    assert set(acct.user) == {"id", "email", "kind", "role", "displayName", "createdAt"}
    again = await api.login("alice.example@example.com", "a good password")
    assert again.user["id"] == acct.user["id"]
    assert again.refresh != acct.refresh
    r = await api.call("GET", f"{V1}/me", token=again.access)
    assert r.status == 200 and r.body["id"] == acct.user["id"]
    assert r.headers["X-Request-Id"]
    # two logins are two sessions (multi-login)
    r = await api.call("GET", f"{V1}/sessions", token=again.access)
    assert len(r.body["items"]) == 2
    assert sum(1 for s in r.body["items"] if s["current"]) == 1
    assert await audit_actions(api, acct.user["id"]) == ["register", "login", "login"]
    # the refresh token is stored only as a hash
    stored = await api.svc.db.read(
        lambda c: c.execute(
            sa.select(sessions.c.refresh_hash).where(sessions.c.user_id == acct.user["id"])
        ).all()
    )
    assert all(len(h[0]) == 64 and h[0] not in (acct.refresh, again.refresh) for h in stored)


async def test_register_answer_shape(api: ApiClient) -> None:
    r = await api.call(
        "POST",
        f"{V1}/auth/register",
        json={"email": "shape@example.org", "password": "shape 12345", "displayName": "Shape"},
    )
    assert r.status == 201
    assert set(r.body) == {"user", "accessToken", "refreshToken", "accessTokenExpiresIn"}
    assert r.body["accessTokenExpiresIn"] == 900
    assert r.body["user"]["displayName"] == "Shape"
    assert len(r.body["refreshToken"]) >= 43  # 256 bits, base64url


async def test_duplicate_email_conflict(api: ApiClient) -> None:
    await api.register("dup@example.com")
    before = await count(api, users)
    r = await api.call(
        "POST", f"{V1}/auth/register", json={"email": "DUP@example.com", "password": "another pass"}
    )
    assert r.status == 409 and r.code == "EMAIL_TAKEN"
    assert await count(api, users) == before


async def test_wrong_password_and_unknown_email(api: ApiClient) -> None:
    acct = await api.register()
    r = await api.call("POST", f"{V1}/auth/login", json={"email": acct.email, "password": "nope"})
    assert r.status == 401 and r.code == "INVALID_CREDENTIALS"
    assert r.body["error"]["retryable"] is False and len(r.body["error"]["traceId"]) == 32
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": f"ghost-{api.ip}@example.com", "password": "whatever"},
    )
    assert r.status == 401 and r.code == "INVALID_CREDENTIALS"
    assert "login_failure" in await audit_actions(api, acct.user["id"])


async def test_login_throttle_per_account(api: ApiClient) -> None:
    acct = await api.register()
    for i in range(5):
        r = await api.call(
            "POST",
            f"{V1}/auth/login",
            json={"email": acct.email, "password": "wrong"},
            ip=f"10.9.{i}.{api.ip[-3:].strip('.')}",
        )
        assert r.status == 401
    # the 6th attempt is refused even with the right password, from any address
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": acct.email, "password": acct.password},
        ip="10.9.8." + api.ip.rsplit(".", 1)[1],
    )
    assert r.status == 429 and r.code == "RATE_LIMITED"
    assert 1 <= int(r.headers["Retry-After"]) <= 900
    assert r.body["error"]["retryable"] is True


async def test_login_throttle_per_ip(api: ApiClient) -> None:
    ip, other_ip = api.ip, "10.77." + api.ip.split(".", 2)[2]
    for i in range(20):
        r = await api.call(
            "POST",
            f"{V1}/auth/login",
            json={"email": f"nobody{i}-{ip}@example.com", "password": "x"},
            ip=ip,
        )
        assert r.status == 401
    acct = await api.register()
    r = await api.call(
        "POST", f"{V1}/auth/login", json={"email": acct.email, "password": acct.password}, ip=ip
    )
    assert r.status == 429 and "Retry-After" in r.headers
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": acct.email, "password": acct.password},
        ip=other_ip,
    )
    assert r.status == 200


async def test_signup_limit_per_ip(api: ApiClient) -> None:
    ip = api.ip
    for _ in range(30):
        r = await api.call("POST", f"{V1}/auth/guest", ip=ip)
        assert r.status == 201
    r = await api.call(
        "POST",
        f"{V1}/auth/register",
        ip=ip,
        json={"email": "late@example.com", "password": "12345678"},
    )
    assert r.status == 429 and r.code == "RATE_LIMITED"
    assert await count(api, users, users.c.email == "late@example.com") == 0


async def test_refresh_rotation_and_reuse_revokes_session(api: ApiClient) -> None:
    acct = await api.register()
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": acct.refresh})
    assert r.status == 200, r.body
    second = r.body["refreshToken"]
    assert second != acct.refresh and r.body["accessToken"]
    r2 = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": second})
    assert r2.status == 200
    third_access = r2.body["accessToken"]
    # presenting the first (rotated) token again is reuse: the whole session dies
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": acct.refresh})
    assert r.status == 401 and r.code == "TOKEN_REUSED"
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": r2.body["refreshToken"]})
    assert r.status == 401 and r.code == "AUTH_INVALID"
    r = await api.call("GET", f"{V1}/me", token=third_access)
    assert r.status == 401 and r.code == "AUTH_INVALID"
    assert "token_reuse" in await audit_actions(api, acct.user["id"])


async def test_refresh_garbage(api: ApiClient) -> None:
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": "not-a-token"})
    assert r.status == 401 and r.code == "AUTH_INVALID"


async def test_logout_revokes_access_and_refresh(api: ApiClient) -> None:
    acct = await api.register()
    other = await api.login(acct.email or "", acct.password or "")
    r = await api.call(
        "POST", f"{V1}/auth/logout", token=acct.access, json={"refreshToken": acct.refresh}
    )
    assert r.status == 204
    r = await api.call("GET", f"{V1}/me", token=acct.access)
    assert r.status == 401 and r.code == "AUTH_INVALID"
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": acct.refresh})
    assert r.status == 401
    # the other login is untouched
    r = await api.call("GET", f"{V1}/me", token=other.access)
    assert r.status == 200


async def test_logout_all(api: ApiClient) -> None:
    acct = await api.register()
    others = [await api.login(acct.email or "", acct.password or "") for _ in range(2)]
    r = await api.call("POST", f"{V1}/auth/logout-all", token=acct.access)
    assert r.status == 204
    for a in [acct, *others]:
        r = await api.call("GET", f"{V1}/me", token=a.access)
        assert r.status == 401
        r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": a.refresh})
        assert r.status == 401
    assert (
        await count(
            api, sessions, sessions.c.user_id == acct.user["id"], sessions.c.revoked_at.is_(None)
        )
        == 0
    )


async def test_sessions_list_and_revoke(api: ApiClient) -> None:
    acct = await api.register()
    second = await api.login(acct.email or "", acct.password or "")
    r = await api.call("GET", f"{V1}/sessions", token=acct.access)
    ids = {s["id"] for s in r.body["items"]}
    assert len(ids) == 2
    target = second.user and next(s["id"] for s in r.body["items"] if not s["current"])
    r = await api.call("DELETE", f"{V1}/sessions/{target}", token=acct.access)
    assert r.status == 204
    r = await api.call("GET", f"{V1}/me", token=second.access)
    assert r.status == 401
    # someone else's session: 404, and it stays alive
    stranger = await api.register()
    r = await api.call("GET", f"{V1}/sessions", token=stranger.access)
    theirs = r.body["items"][0]["id"]
    r = await api.call("DELETE", f"{V1}/sessions/{theirs}", token=acct.access)
    assert r.status == 404 and r.code == "NOT_FOUND"
    r = await api.call("GET", f"{V1}/me", token=stranger.access)
    assert r.status == 200


async def test_guest_then_upgrade_keeps_id_and_conversations(api: ApiClient) -> None:
    g = await api.guest()
    assert g.user["kind"] == "guest" and g.user["email"] is None
    conv = await api.new_conversation(g, "guest chat")
    r = await api.call(
        "POST",
        f"{V1}/auth/upgrade",
        token=g.access,
        json={"email": "upgraded@example.com", "password": "now registered"},
    )
    assert r.status == 200, r.body
    assert r.body["user"]["id"] == g.user["id"]
    assert r.body["user"]["kind"] == "registered"
    r2 = await api.call("GET", f"{V1}/conversations", token=r.body["accessToken"])
    assert [c["id"] for c in r2.body["items"]] == [conv["id"]]
    # the old guest refresh token was rotated away by the upgrade
    r3 = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": g.refresh})
    assert r3.status == 401 and r3.code == "TOKEN_REUSED"
    logged = await api.login("upgraded@example.com", "now registered")
    assert logged.user["id"] == g.user["id"]


async def test_guests_signing_up_together_each_get_their_own_rows(api: ApiClient) -> None:
    # Sign-ups that arrive together share one transaction (group commit): each still gets
    # its own user, session and events, carrying its own request's address and agent.
    n = 12
    replies: dict[int, Any] = {}
    batches: list[int] = []
    store_batch = api.svc.guest_signups.run

    def counted(conn: Any, batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return store_batch(conn, batch)

    api.svc.guest_signups.run = counted

    async def one(i: int) -> None:
        replies[i] = await api.call(
            "POST",
            f"{V1}/auth/guest",
            json={"displayName": f"guest {i}"},
            ip=f"10.77.0.{i + 1}",
            headers={"User-Agent": f"agent/{i}"},
        )

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    assert all(r.status == 201 for r in replies.values()), [r.body for r in replies.values()]
    assert sum(batches) == n and max(batches) > 1, batches  # some of them did share one
    ids = {i: r.body["user"]["id"] for i, r in replies.items()}
    assert len(set(ids.values())) == n
    for i, r in replies.items():
        assert r.body["user"]["displayName"] == f"guest {i}"
        me = await api.call("GET", f"{V1}/me", token=r.body["accessToken"])
        assert me.status == 200 and me.body["id"] == ids[i]
        q = (
            sa.select(audit_events.c.action, audit_events.c.ip, audit_events.c.user_agent)
            .where(audit_events.c.subject_id == ids[i])
            .order_by(audit_events.c.id)
        )
        rows = await api.svc.db.read(lambda c, q=q: c.execute(q).all())
        assert [tuple(row) for row in rows] == [
            ("register", f"10.77.0.{i + 1}", f"agent/{i}"),
            ("login", f"10.77.0.{i + 1}", f"agent/{i}"),
        ]
        sess = await api.svc.db.read(
            lambda c, uid=ids[i]: c.execute(
                sa.select(sessions.c.ip, sessions.c.user_agent).where(sessions.c.user_id == uid)
            ).all()
        )
        assert [tuple(row) for row in sess] == [(f"10.77.0.{i + 1}", f"agent/{i}")]
        # the refresh token is this guest's own
        again = await api.call(
            "POST", f"{V1}/auth/refresh", json={"refreshToken": r.body["refreshToken"]}
        )
        assert again.status == 200, again.body


async def test_upgrade_refused_for_registered(api: ApiClient) -> None:
    acct = await api.register()
    r = await api.call(
        "POST",
        f"{V1}/auth/upgrade",
        token=acct.access,
        json={"email": "x@example.com", "password": "12345678"},
    )
    assert r.status == 409 and r.code == "CONFLICT"


async def test_upgrade_email_taken(api: ApiClient) -> None:
    await api.register("taken@example.net")
    g = await api.guest()
    r = await api.call(
        "POST",
        f"{V1}/auth/upgrade",
        token=g.access,
        json={"email": "taken@example.net", "password": "taken 12345"},
    )
    assert r.status == 409 and r.code == "EMAIL_TAKEN"
    r = await api.call("GET", f"{V1}/me", token=g.access)
    assert r.body["kind"] == "guest"


async def test_bad_tokens(api: ApiClient) -> None:
    r = await api.call("GET", f"{V1}/me")
    assert r.status == 401 and r.code == "AUTH_INVALID"
    r = await api.call("GET", f"{V1}/me", token="eyJhbGciOiJIUzI1NiJ9.e30.xxxx")
    assert r.status == 401 and r.code == "AUTH_INVALID"
    acct = await api.register()
    expired, _ = api.svc.keyring.issue(
        user_id=acct.user["id"], session_id="s", kind="registered", role="user", now=1_000_000
    )
    r = await api.call("GET", f"{V1}/me", token=expired)
    assert r.status == 401 and r.code == "AUTH_EXPIRED"


async def test_delete_me(api: ApiClient) -> None:
    acct = await api.register()
    await api.new_conversation(acct)
    r = await api.call("DELETE", f"{V1}/me", token=acct.access)
    assert r.status == 204
    r = await api.call("GET", f"{V1}/me", token=acct.access)
    assert r.status == 401
    r = await api.call(
        "POST", f"{V1}/auth/login", json={"email": acct.email, "password": acct.password}
    )
    assert r.status == 401
    assert "account_delete" in await audit_actions(api, acct.user["id"])
    # the email is free again
    again = await api.register(acct.email)
    assert again.user["id"] != acct.user["id"]


async def test_parallel_guesses_cannot_overshoot_the_limit(api: ApiClient) -> None:
    import trio

    acct = await api.register()
    codes: list[int] = []

    async def guess(i: int) -> None:
        r = await api.call(
            "POST",
            f"{V1}/auth/login",
            json={"email": acct.email, "password": f"wrong {i}"},
            ip=f"10.8.{i}.{api.ip.rsplit('.', 1)[1]}",
        )
        codes.append(r.status)

    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(guess, i)
    assert codes.count(401) == 5 and codes.count(429) == 7


async def test_revocation_survives_a_cache_outage(api: ApiClient) -> None:
    import trio

    from server.auth.identity import deny_key
    from store.cache import CacheUnavailable

    acct = await api.register()
    cache = api.svc.cache
    real_pipeline = cache.pipeline

    def broken_pipeline() -> object:
        raise CacheUnavailable("cache down (injected)")

    cache.pipeline = broken_pipeline  # type: ignore[method-assign]
    try:
        r = await api.call("POST", f"{V1}/auth/logout", token=acct.access)
        assert r.status == 204
        r = await api.call("GET", f"{V1}/me", token=acct.access)
        assert r.status == 401  # refused at once, although the deny-list write failed
    finally:
        cache.pipeline = real_pipeline  # type: ignore[method-assign]
    sid = api.svc.keyring.verify(acct.access).sid
    for _ in range(50):  # flushed within a few seconds once the cache is back
        if await cache.get(deny_key(sid)) is not None:
            break
        await trio.sleep(0.1)
    assert await cache.get(deny_key(sid)) is not None
    assert sid not in api.svc.pending_denies


async def test_activity_keeps_last_active_fresh(api: ApiClient) -> None:
    import datetime as dt

    g = await api.guest()
    old = dt.datetime(2020, 1, 1)
    await api.svc.db.tx(
        lambda c: c.execute(
            users.update().where(users.c.id == g.user["id"]).values(last_active_at=old)
        )
    )
    # the hour passed: the cache's mark and this process's own memo are gone
    await api.svc.cache.delete(f"active:{g.user['id']}")
    assert g.user["id"] in api.svc.active_noted  # (created active: noted at sign-up)
    api.svc.active_noted.clear()
    r = await api.call("GET", f"{V1}/me", token=g.access)
    assert r.status == 200
    seen = await api.svc.db.read(
        lambda c: c.execute(
            sa.select(users.c.last_active_at).where(users.c.id == g.user["id"])
        ).scalar_one()
    )
    assert seen > old
