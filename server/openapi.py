"""The REST API's OpenAPI 3.1 document, generated from the app's own route table and the
pydantic models (request bodies: ``server/api/schemas.py``; answers: the models below).

Why not a library: quart-schema (the Quart one) validates and documents through its own
decorators and, in the versions that support Quart 0.22, expects asyncio-flavoured
Quart; Parley runs quart-trio 0.12, parses bodies itself (``parse_body``: size bound,
strict models, one error vocabulary), and answers errors through one handler. Generating
the document from ``app.url_map`` + ``pydantic.json_schema`` keeps one source of truth for
each: the routes that exist and the models that validate them. A route without an entry
in :data:`OPERATIONS` still appears (with a generic answer), and a test fails until it has
one (``tests/security/test_openapi.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from quart import Blueprint, Quart

from server.api.schemas import (
    Credentials,
    GuestBody,
    LogoutBody,
    NewConversation,
    RefreshBody,
    Registration,
    RenameConversation,
)

__all__ = ["OPERATIONS", "Operation", "build_document", "register_openapi"]

OPENAPI_PATH = "/api/v1/openapi.json"


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class User(_Out):
    id: str
    email: str | None
    kind: Literal["registered", "guest"]
    role: str
    displayName: str | None
    createdAt: str


class AuthAnswer(_Out):
    user: User | None = None
    accessToken: str
    refreshToken: str
    accessTokenExpiresIn: int


class Session(_Out):
    id: str
    createdAt: str | None
    lastUsedAt: str | None
    expiresAt: str | None
    userAgent: str | None
    ip: str | None
    current: bool


class Conversation(_Out):
    id: str
    title: str
    createdAt: str | None
    updatedAt: str | None
    lastSeq: int


class Message(_Out):
    id: str
    conversationId: str
    seq: int
    role: Literal["user", "assistant", "system"]
    content: str
    status: str
    finishReason: str | None
    createdAt: str


class SessionList(_Out):
    items: list[Session]
    nextCursor: str | None


class ConversationList(_Out):
    items: list[Conversation]
    nextCursor: str | None


class MessageList(_Out):
    items: list[Message]
    nextCursor: str | None


class ErrorDetail(_Out):
    code: str
    message: str
    retryable: bool
    traceId: str


class Error(_Out):
    error: ErrorDetail


class Status(_Out):
    status: str


class AnyObject(_Out):
    pass


@dataclass(frozen=True)
class Operation:
    summary: str
    status: int = 200
    answer: type[BaseModel] | None = None  # None: no body (204) or not JSON
    body: type[BaseModel] | None = None
    body_required: bool = True
    auth: bool = True
    query: dict[str, str] = field(default_factory=dict)  # name -> JSON type
    media: str = "application/json"
    # OpenAPI links from this answer: name -> (operationId, {parameter: runtime expression})
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)


_CONV_ID = {"conversation_id": "$response.body#/id"}
_CONV_LINKS = {
    "read": ("get_api_v1_conversations_conversation_id", _CONV_ID),
    "rename": ("patch_api_v1_conversations_conversation_id", _CONV_ID),
    "history": ("get_api_v1_conversations_conversation_id_messages", _CONV_ID),
    "delete": ("delete_api_v1_conversations_conversation_id", _CONV_ID),
}
_CONV_QUERY = {"limit": "integer", "cursor": "string"}
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/api/v1/auth/register"): Operation(
        "Register", 201, AuthAnswer, Registration, auth=False
    ),
    ("POST", "/api/v1/auth/login"): Operation("Log in", 200, AuthAnswer, Credentials, auth=False),
    ("POST", "/api/v1/auth/guest"): Operation(
        "Start as a guest", 201, AuthAnswer, GuestBody, body_required=False, auth=False
    ),
    ("POST", "/api/v1/auth/upgrade"): Operation(
        "Upgrade the calling guest", 200, AuthAnswer, Registration
    ),
    ("POST", "/api/v1/auth/refresh"): Operation(
        "Rotate the refresh token", 200, AuthAnswer, RefreshBody, auth=False
    ),
    ("POST", "/api/v1/auth/logout"): Operation(
        "Log out this session", 204, None, LogoutBody, body_required=False
    ),
    ("POST", "/api/v1/auth/logout-all"): Operation(
        "Log out every session", 204, None, LogoutBody, body_required=False
    ),
    ("GET", "/api/v1/sessions"): Operation("The caller's sessions", 200, SessionList),
    ("DELETE", "/api/v1/sessions/{session_id}"): Operation("Revoke one of your sessions", 204),
    ("GET", "/api/v1/me"): Operation("The caller", 200, User),
    ("DELETE", "/api/v1/me"): Operation("Delete the account", 204),
    ("GET", "/api/v1/me/export"): Operation("Export the caller's data", 200, AnyObject),
    ("POST", "/api/v1/conversations"): Operation(
        "New conversation",
        201,
        Conversation,
        NewConversation,
        body_required=False,
        links=_CONV_LINKS,
    ),
    ("GET", "/api/v1/conversations"): Operation(
        "Conversations, newest first", 200, ConversationList, query=_CONV_QUERY
    ),
    ("GET", "/api/v1/conversations/{conversation_id}"): Operation(
        "One conversation", 200, Conversation
    ),
    ("PATCH", "/api/v1/conversations/{conversation_id}"): Operation(
        "Rename", 200, Conversation, RenameConversation
    ),
    ("DELETE", "/api/v1/conversations/{conversation_id}"): Operation("Delete (soft)", 204),
    ("GET", "/api/v1/conversations/{conversation_id}/messages"): Operation(
        "History, ascending seq",
        200,
        MessageList,
        query={"afterSeq": "integer", "limit": "integer"},
    ),
    ("GET", "/api/v1/admin/audit"): Operation(
        "Audit events (role admin)",
        200,
        AnyObject,
        query={
            "actor": "string",
            "action": "string",
            "target": "string",
            "targetType": "string",
            "from": "string",
            "to": "string",
            "cursor": "string",
            "limit": "integer",
            "format": "string",
        },
    ),
    ("GET", "/healthz"): Operation("Liveness", 200, Status, auth=False),
    ("GET", "/readyz"): Operation(
        "Readiness (503 while draining or DB down)", 200, AnyObject, auth=False
    ),
    ("GET", "/metrics"): Operation("Prometheus metrics", 200, None, auth=False, media="text/plain"),
    ("GET", OPENAPI_PATH): Operation("This document", 200, AnyObject, auth=False),
}

_MODELS: list[type[BaseModel]] = sorted(
    {m for op in OPERATIONS.values() for m in (op.answer, op.body) if m is not None} | {Error},
    key=lambda m: m.__name__,
)


def documented_rules(app: Quart) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every REST rule of the app: /api/v1 and the ops paths."""
    out: list[tuple[str, str]] = []
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if rule.websocket or not (
            path.startswith("/api/v1/") or path in ("/healthz", "/readyz", "/metrics")
        ):
            continue
        oa_path = path.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, oa_path))
    return sorted(set(out))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(method: str, path: str, op: Operation | None) -> dict[str, Any]:
    op = op or Operation(f"{method} {path}", 200, AnyObject)
    error = {"description": "an error", "content": {"application/json": {"schema": _ref(Error)}}}
    ok: dict[str, Any] = {"description": op.summary}
    if op.links:
        ok["links"] = {
            name: {"operationId": target, "parameters": params}
            for name, (target, params) in op.links.items()
        }
    if op.answer is not None:
        ok["content"] = {op.media: {"schema": _ref(op.answer)}}
    elif op.status != 204:
        ok["content"] = {op.media: {"schema": {"type": "string"}}}
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": method.lower()
        + "_"
        + "_".join(part.strip("{}") for part in path.strip("/").split("/")),
        "responses": {str(op.status): ok, "default": error},
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(path)
    ] + [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in op.query.items()
    ]
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    doc["security"] = [{"bearer": []}] if op.auth else []
    return doc


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def build_document(app: Quart) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for method, path in documented_rules(app):
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, path, OPERATIONS.get((method, path))
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parley REST API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def register_openapi(app: Quart) -> None:
    bp = Blueprint("openapi", __name__)
    cached: dict[str, Any] = {}

    @bp.get(OPENAPI_PATH)
    async def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build_document(app))
        return cached

    app.register_blueprint(bp)
