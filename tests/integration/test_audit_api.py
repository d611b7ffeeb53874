"""The audit trail (contract section 7) on both backends: one test per audited action, the
admin-only query API with its filters, cursor pages and formats, and the data export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from store import users as users_repo
from store.schema import audit_events
from tests.support.api import Account, ApiClient

V1 = "/api/v1"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "User-Agent": "audit-test/1.0"}


async def admin(api: ApiClient) -> Account:
    acct = await api.register()
    assert acct.email
    await api.svc.db.tx(lambda c: users_repo.set_role(c, acct.email or "", "admin"))
    return acct


async def events(api: ApiClient, action: str) -> list[Any]:
    q = sa.select(audit_events).where(audit_events.c.action == action).order_by(audit_events.c.id)
    return list(await api.svc.db.read(lambda c: c.execute(q).all()))


async def _register(api: ApiClient) -> tuple[str, str]:
    r = await api.call(
        "POST",
        f"{V1}/auth/register",
        json={"email": "reg-audit@example.com", "password": "a good password"},
        headers=TP,
    )
    return "user", r.body["user"]["id"]


async def _login(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    await api.call(
        "POST",
        f"{V1}/auth/login",
        json={"email": acct.email, "password": acct.password},
        headers=TP,
    )
    return "session", ""


async def _login_failure(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    await api.call(
        "POST", f"{V1}/auth/login", json={"email": acct.email, "password": "wrong!!!"}, headers=TP
    )
    return "user", acct.user["id"]


async def _token_reuse(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": acct.refresh})
    r = await api.call(
        "POST", f"{V1}/auth/refresh", json={"refreshToken": acct.refresh}, headers=TP
    )
    assert r.code == "TOKEN_REUSED"
    return "session", ""


async def _logout(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    await api.call("POST", f"{V1}/auth/logout", token=acct.access, headers=TP)
    return "session", ""


async def _session_revoke(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    assert acct.email and acct.password
    other = await api.login(acct.email, acct.password)
    r = await api.call("GET", f"{V1}/sessions", token=acct.access)
    sid = next(s["id"] for s in r.body["items"] if not s["current"])
    r = await api.call("DELETE", f"{V1}/sessions/{sid}", token=acct.access, headers=TP)
    assert r.status == 204 and other.user
    return "session", sid


async def _account_delete(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    await api.call("DELETE", f"{V1}/me", token=acct.access, headers=TP)
    return "user", acct.user["id"]


async def _export(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    r = await api.call("GET", f"{V1}/me/export", token=acct.access, headers=TP)
    assert r.status == 200
    return "user", acct.user["id"]


async def _conversation_delete(api: ApiClient) -> tuple[str, str]:
    acct = await api.register()
    conv = await api.new_conversation(acct)
    await api.call("DELETE", f"{V1}/conversations/{conv['id']}", token=acct.access, headers=TP)
    return "conversation", conv["id"]


async def _admin_audit_read(api: ApiClient) -> tuple[str, str]:
    boss = await admin(api)
    r = await api.call("GET", f"{V1}/admin/audit?action=login", token=boss.access, headers=TP)
    assert r.status == 200
    return "audit", "audit"


async def _upgrade(api: ApiClient) -> tuple[str, str]:
    g = await api.guest()
    r = await api.call(
        "POST",
        f"{V1}/auth/upgrade",
        json={"email": "up-audit@example.com", "password": "a good password"},
        token=g.access,
        headers=TP,
    )
    assert r.status == 200
    return "user", g.user["id"]


ACTIONS: dict[str, Callable[[ApiClient], Awaitable[tuple[str, str]]]] = {
    "register": _register,
    "login": _login,
    "login_failure": _login_failure,
    "token_reuse": _token_reuse,
    "logout": _logout,
    "session_revoke": _session_revoke,
    "account_delete": _account_delete,
    "export": _export,
    "conversation_delete": _conversation_delete,
    "admin_audit_read": _admin_audit_read,
    "upgrade": _upgrade,
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_each_audited_action(api: ApiClient, action: str) -> None:
    target_type, target_id = await ACTIONS[action](api)
    rows = [e for e in await events(api, action) if e.trace_id == TRACE]
    assert len(rows) == 1, action
    ev = rows[0]
    assert ev.target_type == target_type
    if target_id:
        assert ev.target_id == target_id
    assert ev.ip == api.ip and ev.user_agent == "audit-test/1.0"
    assert ev.at is not None


async def test_audit_query_is_admin_only(api: ApiClient) -> None:
    user = await api.register()
    r = await api.call("GET", f"{V1}/admin/audit", token=user.access)
    assert r.status == 403 and r.code == "FORBIDDEN"
    r = await api.call("GET", f"{V1}/admin/audit")
    assert r.status == 401


async def test_audit_filters_pages_and_formats(api: ApiClient) -> None:
    boss = await admin(api)
    users = [await api.register() for _ in range(3)]
    for u in users:
        await api.call("POST", f"{V1}/auth/logout", token=u.access)
    first = users[0].user["id"]
    # filter by actor + action
    r = await api.call("GET", f"{V1}/admin/audit?actor={first}&action=logout", token=boss.access)
    assert r.status == 200 and [e["action"] for e in r.body["items"]] == ["logout"]
    ev = r.body["items"][0]
    assert set(ev) == {
        "id",
        "action",
        "actorId",
        "targetType",
        "targetId",
        "ip",
        "userAgent",
        "traceId",
        "createdAt",
    }
    assert ev["actorId"] == first and ev["targetType"] == "session"
    # cursor pages, 2 a page, to the end: these 3 logout events and any an earlier test of
    # the run left in the same database
    seen: list[str] = []
    cursor = ""
    for _ in range(1000):
        r = await api.call(
            "GET", f"{V1}/admin/audit?action=logout&limit=2&cursor={cursor}", token=boss.access
        )
        seen += [e["id"] for e in r.body["items"]]
        cursor = r.body["nextCursor"] or ""
        if not cursor:
            break
    assert len(seen) >= 3 and len(set(seen)) == len(seen)
    # time window: nothing before the epoch, everything until far ahead
    r = await api.call("GET", f"{V1}/admin/audit?to=2000-01-01T00:00:00Z", token=boss.access)
    assert r.body["items"] == []
    r = await api.call(
        "GET", f"{V1}/admin/audit?from=2000-01-01T00:00:00Z&target={first}", token=boss.access
    )
    assert {e["action"] for e in r.body["items"]} == {"register"}
    # ndjson and csv stream every match
    r = await api.call("GET", f"{V1}/admin/audit?action=logout&format=ndjson", token=boss.access)
    lines = [json.loads(x) for x in r.body.decode().splitlines()]
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    assert len(lines) == len(seen) and all(e["action"] == "logout" for e in lines)
    r = await api.call("GET", f"{V1}/admin/audit?action=logout&format=csv", token=boss.access)
    rows = list(csv.DictReader(io.StringIO(r.body.decode())))
    assert [x["id"] for x in rows] == [e["id"] for e in lines]
    # a user agent that a spreadsheet would run as a formula is defused in CSV
    evil = await api.call(
        "POST", f"{V1}/auth/guest", headers={"User-Agent": '=HYPERLINK("http://x")'}
    )
    gid = evil.body["user"]["id"]
    r = await api.call("GET", f"{V1}/admin/audit?target={gid}&format=csv", token=boss.access)
    row = next(csv.DictReader(io.StringIO(r.body.decode())))
    assert row["userAgent"] == '\'=HYPERLINK("http://x")'
    # bad arguments
    for q in (
        "format=xml",
        "cursor=abc",
        "cursor=%C2%B2",
        "from=yesterday",
        "limit=0",
        "limit=%C2%B2",
    ):
        r = await api.call("GET", f"{V1}/admin/audit?{q}", token=boss.access)
        assert r.status == 400, q
    # every read was audited, with its query
    reads = [e for e in await events(api, "admin_audit_read") if e.actor_id == boss.user["id"]]
    assert len(reads) >= 6 and all('"query"' in (e.details or "") for e in reads)


async def test_export_document(api: ApiClient) -> None:
    acct = await api.register()
    conv = await api.new_conversation(acct, "exported")
    other = await api.register()
    await api.new_conversation(other, "not mine")
    r = await api.call("GET", f"{V1}/me/export", token=acct.access)
    assert r.status == 200
    doc = r.body
    assert set(doc) == {"user", "sessions", "conversations", "auditEvents", "exportedAt"}
    assert doc["user"]["id"] == acct.user["id"]
    assert [c["id"] for c in doc["conversations"]] == [conv["id"]]
    assert doc["conversations"][0]["messages"] == []
    assert len(doc["sessions"]) == 1
    assert [e["action"] for e in doc["auditEvents"]] == ["register", "login", "export"]
