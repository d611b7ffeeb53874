"""The WebSocket half of the auth matrix (see test_auth_matrix.py): every client frame type
(``ClientType``, so a new frame type joins by itself) by every bad credential → the
documented close (4500 for an invalid, revoked or deleted caller's token, 4001 for an
expired one) with no frame before it; another user's conversation → ``NOT_FOUND`` and
another user's token on ``auth.refresh`` → ``AUTH_INVALID``, never data (both backends)."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from protocol.frames import ClientType
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect

TOKEN_KINDS = (
    "no token",
    "garbage",
    "wrong signature",
    "unknown kid",
    "expired",
    "revoked session",
    "deleted user",
)
WS_CASES = len(ClientType) * len(TOKEN_KINDS) + len(ClientType) - 1  # ping has no resource


def frame_for(kind: ClientType, conv: str, token: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        ClientType.CHAT_SEND: {
            "conversationId": conv,
            "messageId": str(uuid.uuid4()),
            "content": "hi",
        },
        ClientType.CHAT_CANCEL: {"conversationId": conv, "messageId": str(uuid.uuid4())},
        ClientType.CHAT_RESUME: {"conversationId": conv, "lastMessageSeq": 0},
        ClientType.AUTH_REFRESH: {"accessToken": token},
        ClientType.PING: {},
    }[kind]
    return {"type": kind.value, "requestId": "m-1", "data": data}


async def tokens(live: LiveServer) -> tuple[dict[str, str | None], dict[str, Any], str]:
    rest = Rest(live.http_url)
    victim = await rest.register()
    revoked, deleted = await rest.register(), await rest.register()
    conv = await rest.conversation(victim["accessToken"])
    assert (
        await rest.call("POST", "/api/v1/auth/logout", token=revoked["accessToken"])
    ).status_code == 204
    assert (
        await rest.call("DELETE", "/api/v1/me", token=deleted["accessToken"])
    ).status_code == 204
    access = victim["accessToken"]
    claims = jwt.decode(access, options={"verify_signature": False})
    kid = jwt.get_unverified_header(access)["kid"]
    assert live.svc is not None
    expired, _ = live.svc.keyring.issue(
        user_id=claims["sub"],
        session_id=claims["sid"],
        kind="registered",
        role="user",
        now=time.time() - 3600,
    )
    bad_key = "not-the-key-" + "x" * 40
    kinds: dict[str, str | None] = {
        "no token": None,
        "garbage": "not.a.token",
        "wrong signature": jwt.encode(claims, bad_key, "HS256", headers={"kid": kid}),
        "unknown kid": jwt.encode(claims, bad_key, "HS256", headers={"kid": "zz"}),
        "expired": expired,
        "revoked session": revoked["accessToken"],
        "deleted user": deleted["accessToken"],
    }
    return kinds, victim, conv


async def test_ws_auth_matrix(live: LiveServer) -> None:
    kinds, victim, conv = await tokens(live)
    cases = 0
    failures: list[str] = []
    for frame_type in ClientType:
        for kind in TOKEN_KINDS:
            cases += 1
            token = kinds[kind]
            protos = ["chat.v1"] + ([f"bearer.{token}"] if token else [])
            got: list[str] = []
            code = None
            async with open_websocket_url(live.ws_url, subprotocols=protos) as ws:
                frame = frame_for(frame_type, conv, victim["accessToken"])
                # the server may have closed already: a send can lose that race
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(orjson.dumps(frame).decode())
                try:
                    with trio.fail_after(5):
                        while True:
                            got.append(await ws.get_message())
                except ConnectionClosed as closed:
                    code = closed.reason.code
            want = 4001 if kind == "expired" else 4500
            if code != want or got:
                failures.append(f"{frame_type} [{kind}]: close {code}, frames {got!r:.200}")
    # another user's resource, with a valid token of someone else
    rest = Rest(live.http_url)
    intruder = await rest.register()
    async with connect(live.ws_url, intruder["accessToken"]) as ws:
        for frame_type in ClientType:
            if frame_type is ClientType.PING:
                continue
            cases += 1
            frame = frame_for(frame_type, conv, victim["accessToken"])
            await ws.send_raw(orjson.dumps(frame).decode())
            reply = await ws.recv()
            want = "AUTH_INVALID" if frame_type is ClientType.AUTH_REFRESH else "NOT_FOUND"
            if reply["type"] != "error" or reply["data"]["code"] != want:
                failures.append(f"{frame_type} [another user's]: {reply!r:.200}")
    assert failures == []
    assert cases == WS_CASES
    print(f"WebSocket auth matrix: {len(ClientType)} frame types, {cases} cases")
    history = await rest.history(victim["accessToken"], conv)
    assert history == []  # nothing written into the victim's conversation


@pytest.mark.parametrize("kind", ["revoked session", "deleted user"])
async def test_refresh_to_a_revoked_token_is_refused(live: LiveServer, kind: str) -> None:
    kinds, victim, _ = await tokens(live)
    async with connect(live.ws_url, victim["accessToken"]) as ws:
        await ws.send("auth.refresh", {"accessToken": kinds[kind]})
        reply = await ws.recv()
        assert reply["type"] == "error" and reply["data"]["code"] == "AUTH_INVALID"
