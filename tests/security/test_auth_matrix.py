"""The auth matrix, generated: every REST route of the app's own route table (``app.url_map``
through ``server.openapi.documented_rules``) and every client frame type
(``protocol.frames.ClientType``) against every kind of bad credential, each answered with
the documented refusal and never data (both backends).

REST, per route that needs a caller (``OPERATIONS[...].auth``): no token, garbage, a wrong
signature, an unknown ``kid``, expired, a revoked session, a deleted user → 401
(``AUTH_EXPIRED`` for expired, else ``AUTH_INVALID``); per route with a path parameter:
another user's resource → 404 ``NOT_FOUND``; per route that needs a role or a kind
(:data:`REQUIRES`): a guest or a non-admin on an admin route → 403 ``FORBIDDEN``, a
registered user on a guest-only route → 409 ``CONFLICT``. A route added to the app joins
the matrix by itself (and ``test_openapi`` fails until it has an OpenAPI entry).

WebSocket, per client frame type (tests/security/test_auth_matrix_ws.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from server.openapi import OPERATIONS, documented_rules
from tests.support.api import Account, ApiClient

V1 = "/api/v1"
#: Routes that need more than a caller: the role or the kind they need.
REQUIRES = {("GET", f"{V1}/admin/audit"): "admin", ("POST", f"{V1}/auth/upgrade"): "guest"}
TOKEN_KINDS = (
    "no token",
    "garbage",
    "wrong signature",
    "unknown kid",
    "expired",
    "revoked session",
    "deleted user",
)
#: The number of REST cases on the app of this commit (docs/SPEC.md 2.1 reports it).
REST_CASES_AT_LEAST = 113


@dataclass
class World:
    victim: Account
    other: Account
    guest: Account
    revoked: Account
    deleted: Account
    conv: str  # the victim's conversation
    other_conv: str  # another user's
    other_sid: str


def _body(path: str, method: str) -> dict[str, Any] | None:
    op = OPERATIONS.get((method, path))
    if op is None or op.body is None:
        return None
    name = op.body.__name__
    if name == "Registration":
        return {"email": f"m-{uuid.uuid4().hex[:10]}@example.com", "password": "matrix pass 1"}
    if name == "Credentials":
        return {"email": "nobody@example.com", "password": "matrix pass 1"}
    if name == "RefreshBody":
        return {"refreshToken": "x"}
    if name in ("NewConversation", "RenameConversation"):
        return {"title": "matrix"}
    return {}


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _forge(api: ApiClient, acct: Account, how: str) -> str:
    claims = jwt.decode(acct.access, options={"verify_signature": False})
    if how == "wrong signature":
        kid = jwt.get_unverified_header(acct.access)["kid"]
        return jwt.encode(claims, "not-the-key-" + "x" * 40, "HS256", headers={"kid": kid})
    if how == "unknown kid":
        return jwt.encode(claims, "not-the-key-" + "x" * 40, "HS256", headers={"kid": "zz"})
    assert how == "expired"
    sid, sub = claims["sid"], claims["sub"]
    token, _ = api.svc.keyring.issue(
        user_id=sub, session_id=sid, kind="registered", role="user", now=time.time() - 3600
    )
    return token


async def _world(api: ApiClient) -> World:
    victim, other = await api.register(), await api.register()
    revoked, deleted = await api.register(), await api.register()
    guest = await api.guest()
    conv = (await api.new_conversation(victim))["id"]
    other_conv = (await api.new_conversation(other))["id"]
    other_sid = api.svc.keyring.verify(other.access).sid
    assert (await api.call("POST", f"{V1}/auth/logout", token=revoked.access)).status == 204
    assert (await api.call("DELETE", f"{V1}/me", token=deleted.access)).status == 204
    return World(victim, other, guest, revoked, deleted, conv, other_conv, other_sid)


def _token(api: ApiClient, w: World, kind: str) -> str | None:
    tokens: dict[str, Callable[[], str | None]] = {
        "no token": lambda: None,
        "garbage": lambda: "not.a.token",
        "wrong signature": lambda: _forge(api, w.victim, "wrong signature"),
        "unknown kid": lambda: _forge(api, w.victim, "unknown kid"),
        "expired": lambda: _forge(api, w.victim, "expired"),
        "revoked session": lambda: w.revoked.access,
        "deleted user": lambda: w.deleted.access,
    }
    return tokens[kind]()


def _no_data(body: Any) -> bool:
    return isinstance(body, dict) and set(body) == {"error"}


async def test_rest_auth_matrix(api: ApiClient) -> None:
    w = await _world(api)
    own = {"conversation_id": w.conv, "session_id": api.svc.keyring.verify(w.victim.access).sid}
    theirs = {"conversation_id": w.other_conv, "session_id": w.other_sid}
    failures: list[str] = []
    cases = 0

    async def expect(
        label: str, method: str, path: str, token: str | None, status: int, code: str
    ) -> None:
        nonlocal cases
        cases += 1
        r = await api.call(method, path, json=_body(label, method), token=token)
        if r.status != status or r.code != code or not _no_data(r.body):
            failures.append(f"{method} {path} [{label}]: {r.status} {r.body!r:.200}")

    rules = documented_rules(api.client.app)
    for method, template in rules:
        op = OPERATIONS.get((method, template))
        if op is None or not op.auth:
            continue
        path = _fill(template, own)
        for kind in TOKEN_KINDS:
            code = "AUTH_EXPIRED" if kind == "expired" else "AUTH_INVALID"
            await expect(template, method, path, _token(api, w, kind), 401, code)
        if "{" in template:
            await expect(
                template, method, _fill(template, theirs), w.victim.access, 404, "NOT_FOUND"
            )
        need = REQUIRES.get((method, template))
        if need == "admin":
            for who in (w.guest, w.victim):
                await expect(template, method, path, who.access, 403, "FORBIDDEN")
        elif need == "guest":
            await expect(template, method, path, w.victim.access, 409, "CONFLICT")
    assert failures == []
    assert cases >= REST_CASES_AT_LEAST, cases
    print(f"REST auth matrix: {len(rules)} routes, {cases} cases")
    # nothing was written for the victim by any refused call
    r = await api.call("GET", f"{V1}/conversations", token=w.victim.access)
    assert [c["id"] for c in r.body["items"]] == [w.conv]
    r = await api.call("GET", f"{V1}/conversations/{w.conv}", token=w.victim.access)
    assert r.body["title"] == "hello"
