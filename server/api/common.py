"""Request plumbing shared by every route: services, body parsing, the caller, the client IP."""

from __future__ import annotations

import json
from typing import TypeVar, cast

import orjson
import trio
from pydantic import BaseModel, ValidationError
from quart import current_app, g, request
from quart_trio import QuartTrio

from protocol.errors import ProtocolError
from server.access import bind_user
from server.auth.identity import Principal, authenticate, note_activity
from server.errors import ApiError
from server.net import forwarded_ip
from server.services import Services

__all__ = [
    "Principal",
    "app_nursery",
    "client_ip",
    "forwarded_ip",
    "parse_body",
    "require_principal",
    "services",
]

M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 64 * 1024


def services() -> Services:
    return current_app.config["PARLEY_SERVICES"]


def app_nursery() -> trio.Nursery:
    """The app's own nursery (quart-trio's, open while it serves): work a request starts
    there outlives the request."""
    return cast(QuartTrio, current_app).nursery


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


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ApiError("VALIDATION_FAILED", "body has a duplicate key")
    return dict(pairs)


def _refuse_duplicate_keys(raw: str | bytes) -> None:
    """A key given twice is refused, not resolved (parsers disagree on which one wins: a
    proxy and the server must never read two different bodies). orjson has parsed it
    already, strictly; this second pass only looks at the keys."""
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except RecursionError as exc:
        raise ApiError("VALIDATION_FAILED", "body is nested too deeply") from exc


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
        data = orjson.loads(raw)  # strict: UTF-8, no lone surrogates, no NaN, depth 1024
    except orjson.JSONDecodeError as exc:
        raise ApiError("VALIDATION_FAILED", "body is not valid JSON") from exc
    _refuse_duplicate_keys(raw)
    if not isinstance(data, dict):
        raise ApiError("VALIDATION_FAILED", "body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError("VALIDATION_FAILED", _describe(exc)) from exc


async def require_principal() -> Principal:
    cached = g.get("principal")
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("AUTH_INVALID", "missing bearer token")
    svc = services()
    try:
        principal = await authenticate(svc, token.strip())
    except ProtocolError as exc:
        raise ApiError.from_protocol(exc) from exc
    g.principal = principal
    bind_user(principal.user_id)
    await note_activity(svc, principal.user_id)
    return principal
