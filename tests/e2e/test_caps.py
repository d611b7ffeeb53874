"""The capacity caps of docs/SPEC.md 7.3 over real sockets: the per-instance connection
cap (close 1013) and the per-user cap on turns streaming at once (3)."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from server.ws.admission import presence_key
from server.ws.connection import WsConfig
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect, expect_close

LIVE_WS_CONFIG = WsConfig(max_connections=2)
# slow answers, so three turns are still streaming when the fourth is sent
LIVE_SETTINGS = {"sim_tokens_per_second": 10.0, "sim_max_tokens": 100}


async def _until_empty(live: LiveServer) -> None:
    """Sockets of an earlier test may still be closing: the cap counts them."""
    assert live.svc is not None
    for _ in range(200):
        if live.svc.metrics.ws_connections._value.get() == 0:
            return
        await trio.sleep(0.05)
    raise AssertionError("sockets of an earlier test are still open")


async def test_instance_cap_closes_1013(live: LiveServer) -> None:
    await _until_empty(live)
    rest = Rest(live.http_url)
    tokens = [(await rest.register())["accessToken"] for _ in range(3)]
    async with (
        connect(live.ws_url, tokens[0]),
        connect(live.ws_url, tokens[1]),
        open_websocket_url(live.ws_url, subprotocols=["chat.v1", f"bearer.{tokens[2]}"]) as ws,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
    assert closed.value.reason.code == 1013


async def test_three_turns_per_user_at_once(live: LiveServer) -> None:
    await _until_empty(live)
    rest = Rest(live.http_url)
    token = (await rest.register())["accessToken"]
    convs = [await rest.conversation(token, f"c{i}") for i in range(4)]
    async with connect(live.ws_url, token) as ws:
        for i, conv in enumerate(convs):
            await ws.send(
                "chat.send",
                {
                    "conversationId": conv,
                    "messageId": f"00000000-0000-4000-8000-00000000000{i}",
                    "content": f"question {i}",
                },
            )
        acks, errors = [], []
        with trio.fail_after(20):
            while len(acks) + len(errors) < 4:
                frame = await ws.recv()
                if frame["type"] == "chat.ack":
                    acks.append(frame)
                elif frame["type"] == "error":
                    errors.append(frame)
        assert len(acks) == 3 and len(errors) == 1
        err = errors[0]["data"]
        assert err["code"] == "CONVERSATION_BUSY" and err["retryable"] is True
        assert "at most 3" in err["message"]
        for ack in acks:  # stop them: the module's server is shared
            await ws.send(
                "chat.cancel",
                {
                    "conversationId": ack["data"]["conversationId"],
                    "messageId": ack["data"]["assistantMessageId"],
                },
            )


async def _closed_with(live: LiveServer, token: str) -> int:
    code, _ = await expect_close(live.ws_url, ["chat.v1", f"bearer.{token}"])
    return code


async def test_refused_handshakes_leave_the_users_socket_count_as_it_was(
    live: LiveServer,
) -> None:
    # A socket joins its user's count (the cap of 4504) with the upgrade's cache round
    # trip, before it is authenticated; one refused after that must leave the count.
    await _until_empty(live)
    assert live.svc is not None
    rest = Rest(live.http_url)
    reg = await rest.register()
    user_id, token = reg["user"]["id"], reg["accessToken"]
    revoked = await rest.login(reg["user"]["email"], "password 123")
    r = await rest.call("POST", "/api/v1/auth/logout", token=revoked["accessToken"])
    assert r.status_code == 204
    other = (await rest.register())["accessToken"]

    async def counted() -> int:
        return int(
            await trio.to_thread.run_sync(
                live.run_async, live.svc.cache.presence_add, presence_key(user_id), [], 60.0
            )
        )

    async with connect(live.ws_url, token):
        assert await counted() == 1
        for _ in range(3):  # a revoked session: accepted, then closed
            assert await _closed_with(live, revoked["accessToken"]) == 4500
        async with connect(live.ws_url, other):
            assert await _closed_with(live, token) == 1013  # the instance is full
        assert await counted() == 1
    for _ in range(100):  # the socket's own entry goes when it closes
        if await counted() == 0:
            break
        await trio.sleep(0.05)
    assert await counted() == 0
