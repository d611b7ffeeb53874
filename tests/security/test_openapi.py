"""The OpenAPI 3.1 document: generated from the route table, served, every REST route in it
with its own entry, the answers matching it; security headers on every HTTP answer."""

from __future__ import annotations

from typing import Any

from server.openapi import OPERATIONS, documented_rules
from tests.support.api import ApiClient

V1 = "/api/v1"


async def test_the_document_is_served_and_covers_every_route(api: ApiClient) -> None:
    r = await api.call("GET", f"{V1}/openapi.json")
    assert r.status == 200
    doc: dict[str, Any] = r.body
    assert doc["openapi"] == "3.1.0"
    app = api.client.app
    rules = documented_rules(app)
    assert len(rules) >= 20
    missing = [rule for rule in rules if rule not in OPERATIONS]
    assert missing == [], "add these routes to server/openapi.OPERATIONS"
    for method, path in rules:
        op = doc["paths"][path][method.lower()]
        assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    schemas = doc["components"]["schemas"]
    assert {"Registration", "Credentials", "User", "AuthAnswer", "Error"} <= set(schemas)
    # request bodies are the models that validate them: unknown fields refused
    assert schemas["Registration"]["additionalProperties"] is False
    # links (conversation → read, rename, history, delete) name operations that exist
    ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    links = doc["paths"][f"{V1}/conversations"]["post"]["responses"]["201"]["links"]
    assert len(links) == 4 and {link["operationId"] for link in links.values()} <= ids


async def test_security_headers_on_every_http_answer(api: ApiClient) -> None:
    acct = await api.register()
    answers = [
        await api.call("GET", f"{V1}/me", token=acct.access),
        await api.call("GET", f"{V1}/me"),  # 401
        await api.call("GET", f"{V1}/nope"),  # 404
        await api.call("POST", f"{V1}/auth/login", data=b"{"),  # 400
        await api.call("GET", "/healthz"),
        await api.call("GET", "/metrics"),
    ]
    for r in answers:
        assert r.headers["X-Content-Type-Options"] == "nosniff", r.status
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_every_route_bounds_its_body(api: ApiClient) -> None:
    acct = await api.register()
    big = b'{"title": "' + b"a" * 70_000 + b'"}'
    for method, path in documented_rules(api.client.app):
        filled = path.replace("{conversation_id}", "00000000-0000-4000-8000-000000000000")
        filled = filled.replace("{session_id}", "nope")
        r = await api.call(
            method, filled, data=big, token=acct.access, headers={"Content-Length": str(len(big))}
        )
        assert r.status == 413 and r.code == "PAYLOAD_TOO_LARGE", (method, path, r.status)
    assert (await api.call("GET", f"{V1}/me", token=acct.access)).status == 200
