"""Issue 12's review findings, each with the test that failed before its fix (both backends
unless named; the accent variants matter on MariaDB, whose column collation is accent- and
case-insensitive)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from protocol.errors import ProtocolError
from server.app import create_app
from server.auth.identity import authenticate, deny_key
from server.auth.passwords import PasswordService
from server.services import build_services
from server.settings import Settings
from store.schema import sessions
from tests.conftest import make_settings
from tests.support.api import ApiClient
from tests.support.cluster import RedisServer

V1 = "/api/v1"


@asynccontextmanager
async def restarted(settings: Settings, passwords: PasswordService) -> AsyncIterator[ApiClient]:
    """A new process's worth of state on the same database: new services, new cache."""
    svc = build_services(settings, passwords=passwords)
    app = create_app(svc)
    async with app.test_app() as test_app:
        yield ApiClient(test_app.test_client(), svc)


async def test_accent_and_case_variants_are_one_account_limit(api: ApiClient) -> None:
    dom = f"x-{uuid.uuid4().hex[:10]}.example"  # Redis outlives runs: a domain of its own
    carol = await api.register(f"carol@{dom}", "carol's long secret")
    for i in range(5):
        r = await api.call(
            "POST", f"{V1}/auth/login", json={"email": carol.email, "password": f"wrong {i}"}
        )
        assert r.status == 401
    r = await api.call(
        "POST", f"{V1}/auth/login", json={"email": carol.email, "password": carol.password}
    )
    assert r.status == 429
    for variant in (f"cárol@{dom}", f"càrol@{dom}", f"CAROL@{dom.upper()}"):
        r = await api.call(
            "POST", f"{V1}/auth/login", json={"email": variant, "password": "wrong again"}
        )
        # an upper-case variant is the same canonical email: limited; an accent variant is
        # another (unknown) address: it never reaches carol's account
        assert r.status in (401, 429), r.body
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": f"cârol@{dom}", "password": carol.password},
    )
    assert r.status == 401 and r.code == "INVALID_CREDENTIALS"
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": f"CAROL@{dom}", "password": carol.password},
    )
    assert r.status == 429  # case variants share the canonical email's limit


async def test_email_is_stored_in_one_canonical_form(api: ApiClient) -> None:
    tag = uuid.uuid4().hex[:8]
    acct = await api.register(f"Straße.ﬁ.{tag}@Example.ORG", "a fine passphrase")
    assert acct.user["email"] == f"strasse.fi.{tag}@example.org"
    r = await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": f"STRASSE.FI.{tag}@example.org", "password": "a fine passphrase"},
    )
    assert r.status == 200


@pytest.mark.parametrize("how", ["logout-all", "session-revoke", "delete-me"])
async def test_revocation_survives_a_restart(
    api: ApiClient, settings: Settings, fast_passwords: PasswordService, how: str
) -> None:
    acct = await api.register()
    other = await api.login(str(acct.email), str(acct.password))
    assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 200
    sid = api.svc.keyring.verify(acct.access).sid
    if how == "logout-all":
        r = await api.call("POST", f"{V1}/auth/logout-all", token=acct.access)
    elif how == "session-revoke":
        r = await api.call("DELETE", f"{V1}/sessions/{sid}", token=other.access)
    else:
        r = await api.call("DELETE", f"{V1}/me", token=acct.access)
    assert r.status == 204
    # the cache forgets (the embedded cache dies with its process; Redis may lose data)
    await api.svc.cache.delete(deny_key(sid))
    async with restarted(settings, fast_passwords) as fresh:
        r = await fresh.call("GET", f"{V1}/me", token=acct.access)
        assert r.status == 401 and r.code == "AUTH_INVALID"
        r = await fresh.call("POST", f"{V1}/conversations", json={}, token=acct.access)
        assert r.status == 401
        with pytest.raises(ProtocolError):  # what the WebSocket upgrade calls
            await authenticate(fresh.svc, acct.access)
        # and the deny-list has the entry again: the next check needs no database
        assert await fresh.svc.cache.get(deny_key(sid)) is not None


@pytest.mark.mysql
@pytest.mark.redis
async def test_revocation_survives_a_flushed_redis(
    request: pytest.FixtureRequest, tmp_path: Path, fast_passwords: PasswordService
) -> None:
    own = RedisServer(tmp_path)
    own.start()
    try:
        settings = make_settings("mysql", request, tmp_path, redis_url=own.url)
        async with restarted(settings, fast_passwords) as api:
            acct = await api.register()
            assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 200
            assert (await api.call("POST", f"{V1}/auth/logout", token=acct.access)).status == 204
            client = redis.Redis.from_url(own.url)
            client.flushall()
            client.close()
            r = await api.call("GET", f"{V1}/me", token=acct.access)
            assert r.status == 401
    finally:
        own.stop()


async def test_a_live_session_is_checked_in_the_database_once_then_cached(
    api: ApiClient,
) -> None:
    acct = await api.register()
    sid = api.svc.keyring.verify(acct.access).sid
    api.svc.live_sessions.clear()
    assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 200
    assert sid in api.svc.live_sessions
    # revoked in the database behind the server's back: the positive cache holds briefly
    await api.svc.db.tx(
        lambda c: c.execute(
            sessions.update().where(sessions.c.id == sid).values(revoked_at=sa.func.now())
        )
    )
    api.svc.live_sessions.clear()  # (its few seconds passed)
    assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 401


async def test_a_session_this_process_creates_is_known_live_and_revocation_still_wins(
    api: ApiClient,
) -> None:
    acct = await api.register()
    sid = api.svc.keyring.verify(acct.access).sid
    assert sid in api.svc.live_sessions  # its first request or connect reads no database
    r = await api.call("POST", f"{V1}/auth/logout", token=acct.access)
    assert r.status in (200, 204)
    assert sid not in api.svc.live_sessions
    assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 401


async def test_upgrade_checks_the_guest_first_and_is_limited_per_user(api: ApiClient) -> None:
    acct = await api.register()
    calls = 0
    real_hash = api.svc.passwords.hash

    async def counting(password: str) -> str:
        nonlocal calls
        calls += 1
        return await real_hash(password)

    api.svc.passwords.hash = counting  # type: ignore[method-assign]
    body = {"email": "someone-else@example.com", "password": "a fine passphrase"}
    r = await api.call("POST", f"{V1}/auth/upgrade", json=body, token=acct.access)
    assert r.status == 409 and r.code == "CONFLICT"
    assert calls == 0  # no argon2 for a caller who is not a guest
    guest = await api.guest()
    statuses = []
    for _ in range(api.svc.settings.upgrades_per_user_per_hour + 1):
        r = await api.call(
            "POST",
            f"{V1}/auth/upgrade",
            json={"email": acct.email, "password": "a fine passphrase"},
            token=guest.access,
        )
        statuses.append(r.status)
    assert statuses[:-1] == [409] * api.svc.settings.upgrades_per_user_per_hour
    assert statuses[-1] == 429 and "Retry-After" in r.headers


async def test_upgrade_is_in_the_per_ip_signup_budget(
    api: ApiClient, settings: Settings, fast_passwords: PasswordService
) -> None:
    ip = "10.250." + api.ip.split(".", 2)[2]
    budget = settings.signups_per_ip_per_hour
    guests = []
    for _ in range(budget):
        r = await api.call("POST", f"{V1}/auth/guest", ip=ip)
        assert r.status == 201
        guests.append(r.body["accessToken"])
    r = await api.call(
        "POST",
        f"{V1}/auth/upgrade",
        json={"email": "budget@example.com", "password": "a fine passphrase"},
        token=guests[0],
        ip=ip,
    )
    assert r.status == 429


async def test_successful_logins_are_limited_and_sessions_capped(api: ApiClient) -> None:
    s = api.svc.settings
    acct = await api.register()
    first = acct.access
    for _ in range(s.max_sessions_per_user):
        await api.login(str(acct.email), str(acct.password))
    latest = await api.login(str(acct.email), str(acct.password))
    r = await api.call("GET", f"{V1}/sessions", token=latest.access)
    assert len(r.body["items"]) == s.max_sessions_per_user
    assert (await api.call("GET", f"{V1}/me", token=first)).status == 401  # the oldest
    for _ in range(s.logins_per_account_per_hour - s.max_sessions_per_user - 1):
        await api.login(str(acct.email), str(acct.password))
    r = await api.call(
        "POST", f"{V1}/auth/login", json={"email": acct.email, "password": acct.password}
    )
    assert r.status == 429 and r.code == "RATE_LIMITED"


@pytest.mark.parametrize(
    "password", ["12345678", "Password123", "qwertyuiop", "{email}", "{local}", "{local}123"]
)
async def test_weak_passwords_are_refused(api: ApiClient, password: str) -> None:
    email = f"weakling-{api.ip.replace('.', '-')}@example.com"
    pw = password.format(email=email, local=email.partition("@")[0])
    r = await api.call("POST", f"{V1}/auth/register", json={"email": email, "password": pw})
    assert r.status == 400 and r.code == "VALIDATION_FAILED", r.body
    guest = await api.guest()
    r = await api.call(
        "POST", f"{V1}/auth/upgrade", json={"email": email, "password": pw}, token=guest.access
    )
    assert r.status == 400 and r.code == "VALIDATION_FAILED"


def test_fault_injection_is_off_unless_set() -> None:
    assert Settings().sim_faults is False
    assert Settings(sim_fault_injection=True).sim_faults is True
    assert Settings(sim_fault_injection=True, env="production").sim_faults is False
