"""A small REST client for tests: a random client IP per instance, helpers for auth."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from server.services import Services

__all__ = ["Account", "ApiClient", "Reply"]


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and "error" in self.body:
            return str(self.body["error"]["code"])
        return None


@dataclass
class Account:
    email: str | None
    password: str | None
    user: dict[str, Any]
    access: str
    refresh: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


class ApiClient:
    def __init__(self, client: Any, svc: Services) -> None:
        self.client = client
        self.svc = svc
        self.ip = (
            f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        ip: str | None = None,
    ) -> Reply:
        hdrs = {"X-Forwarded-For": ip or self.ip}
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if headers:
            hdrs.update(headers)
        kwargs: dict[str, Any] = {"headers": hdrs}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
            hdrs.setdefault("Content-Type", "application/json")
        resp = await self.client.open(path, method=method, **kwargs)
        raw = await resp.get_data()
        body: Any = None
        if raw:
            body = orjson.loads(raw) if resp.mimetype == "application/json" else raw
        return Reply(resp.status_code, body, resp.headers)

    async def register(
        self, email: str | None = None, password: str = "correct horse 1"
    ) -> Account:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        r = await self.call(
            "POST", "/api/v1/auth/register", json={"email": email, "password": password}
        )
        assert r.status == 201, r.body
        return Account(
            email, password, r.body["user"], r.body["accessToken"], r.body["refreshToken"]
        )

    async def login(self, email: str, password: str) -> Account:
        r = await self.call(
            "POST", "/api/v1/auth/login", json={"email": email, "password": password}
        )
        assert r.status == 200, r.body
        return Account(
            email, password, r.body["user"], r.body["accessToken"], r.body["refreshToken"]
        )

    async def guest(self) -> Account:
        r = await self.call("POST", "/api/v1/auth/guest")
        assert r.status == 201, r.body
        return Account(None, None, r.body["user"], r.body["accessToken"], r.body["refreshToken"])

    async def new_conversation(self, acct: Account, title: str = "hello") -> dict[str, Any]:
        r = await self.call(
            "POST", "/api/v1/conversations", json={"title": title}, token=acct.access
        )
        assert r.status == 201, r.body
        return dict(r.body)
