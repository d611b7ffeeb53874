"""WebSocket handshake, validation, close codes and connection rules over real sockets."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from server.ws.connection import WsConfig
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect, expect_close

LIVE_WS_CONFIG = WsConfig(ping_interval=0.5, pong_timeout=1.0, max_connections_per_user=3)
LIVE_SETTINGS = {"chat_sends_per_user_per_minute": 5}


async def account(live: LiveServer) -> tuple[Rest, dict, str]:
    rest = Rest(live.http_url)
    reg = await rest.register()
    return rest, reg, reg["accessToken"]


async def test_subprotocol_negotiation(live: LiveServer) -> None:
    _, _, token = await account(live)
    async with open_websocket_url(live.ws_url, subprotocols=["chat.v1", f"bearer.{token}"]) as ws:
        assert ws.subprotocol == "chat.v1"  # never the token
        hello = orjson.loads(await ws.get_message())
        assert hello["type"] == "session.ready" and hello["requestId"] is None
    # no chat.v1 offered: a real HTTP 400, nothing accepted
    for protos in ([f"bearer.{token}"], [], ["chat.v2", f"bearer.{token}"]):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(live.ws_url, subprotocols=protos):
                pass
        assert rejected.value.status_code == 400
        body = orjson.loads(rejected.value.body)["error"]
        assert body["code"] == "VALIDATION_FAILED" and "chat.v1" in body["message"]


async def test_bad_and_expired_tokens_close_after_accept(live: LiveServer) -> None:
    assert await expect_close(live.ws_url, ["chat.v1"]) == (4500, "AUTH_INVALID")
    assert await expect_close(live.ws_url, ["chat.v1", "bearer.garbage"]) == (4500, "AUTH_INVALID")
    _, reg, _ = await account(live)
    assert live.svc is not None
    expired, _ = live.svc.keyring.issue(
        user_id=reg["user"]["id"], session_id="s", kind="registered", role="user", now=1_000_000
    )
    assert await expect_close(live.ws_url, ["chat.v1", f"bearer.{expired}"]) == (
        4001,
        "AUTH_EXPIRED",
    )


async def test_origin_allow_list(live: LiveServer) -> None:
    _, _, token = await account(live)
    with pytest.raises(ConnectionRejected) as rejected:
        async with connect(live.ws_url, token, origin="https://evil.example"):
            pass
    assert rejected.value.status_code == 403
    body = orjson.loads(rejected.value.body)["error"]
    assert body["code"] == "FORBIDDEN" and "PARLEY_ALLOWED_ORIGINS" in body["message"]
    assert "evil.example" in body["message"]
    async with connect(live.ws_url, token, origin=live.http_url) as ws:
        assert ws.received[0]["type"] == "session.ready"


async def test_invalid_frames_answer_errors_and_keep_the_connection(live: LiveServer) -> None:
    rest, _, token = await account(live)
    conv = await rest.conversation(token)
    async with connect(live.ws_url, token) as ws:
        await ws.send_raw("{not json")
        err = await ws.recv()
        assert err["type"] == "error" and err["data"]["code"] == "VALIDATION_FAILED"
        assert err["data"]["class"] == "VALIDATION" and err["data"]["retryable"] is False
        await ws.send("chat.explode", {})
        err = await ws.recv()
        assert err["data"]["code"] == "UNKNOWN_TYPE" and err["requestId"] == "r-1"
        await ws.send(
            "chat.send",
            {"conversationId": conv, "messageId": str(uuid.uuid4()), "content": "x" * 8001},
        )
        err = await ws.recv()
        assert err["data"]["code"] == "PAYLOAD_TOO_LARGE" and err["requestId"] == "r-2"
        await ws.send(
            "chat.send", {"conversationId": conv, "messageId": "not-a-uuid", "content": "hi"}
        )
        err = await ws.recv()
        assert err["data"]["code"] == "VALIDATION_FAILED" and "messageId" in err["data"]["message"]
        await ws.send_raw(b"\x00binary")
        err = await ws.recv()
        assert err["data"]["code"] == "VALIDATION_FAILED"
        # still usable
        await ws.send("ping", request_id="p1")
        pong = await ws.recv()
        assert pong["type"] == "pong" and pong["requestId"] == "p1"
    history = await rest.history(token, conv)
    assert history == []  # nothing stored by bad input


async def test_ten_invalid_frames_in_a_minute_close_4509(live: LiveServer) -> None:
    _, _, token = await account(live)
    async with connect(live.ws_url, token) as ws:
        for _ in range(9):
            await ws.send_raw("[]")
            assert (await ws.recv())["type"] == "error"
        await ws.send_raw("[]")
        assert (await ws.recv())["type"] == "error"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.reason.code == 4509


async def test_oversized_frame_closes_1009(live: LiveServer) -> None:
    _, _, token = await account(live)
    # 64 KiB is counted in UTF-8 bytes: 30,000 three-byte characters are 90,000 bytes
    for big in ("x" * (64 * 1024 + 1), "\u20ac" * 30_000):
        async with connect(live.ws_url, token) as ws:
            await ws.send_raw(big)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.reason.code == 1009
            assert closed.value.reason.reason == "PAYLOAD_TOO_LARGE"


async def test_server_fault_before_ack_is_a_retryable_error(live: LiveServer) -> None:
    rest, _, token = await account(live)
    conv = await rest.conversation(token)
    assert live.svc is not None
    db = live.svc.db
    real_tx = db.tx

    async def broken_tx(fn: object) -> object:
        raise RuntimeError("database unreachable (injected)")

    async with connect(live.ws_url, token) as ws:
        db.tx = broken_tx  # type: ignore[method-assign]
        try:
            failed = await ws.turn(conv, "hello")
        finally:
            db.tx = real_tx  # type: ignore[method-assign]
        err = failed.errors[0]["data"]
        assert err["code"] == "SERVER_ERROR" and err["class"] == "SERVER" and err["retryable"]
        ok = await ws.turn(conv, "hello again")  # same connection, still usable
        assert ok.done is not None and ok.done["data"]["status"] == "completed"
    assert len(await rest.history(token, conv)) == 2


async def test_other_users_conversation_is_not_found(live: LiveServer) -> None:
    rest, _, owner_token = await account(live)
    conv = await rest.conversation(owner_token)
    _, _, intruder = await account(live)
    async with connect(live.ws_url, intruder) as ws:
        for cid in (conv, str(uuid.uuid4())):
            result = await ws.turn(cid, "let me in")
            assert result.errors[0]["data"]["code"] == "NOT_FOUND"
        await ws.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 0})
        assert (await ws.recv())["data"]["code"] == "NOT_FOUND"
        await ws.send("chat.cancel", {"conversationId": conv, "messageId": str(uuid.uuid4())})
        assert (await ws.recv())["data"]["code"] == "NOT_FOUND"
    assert await rest.history(owner_token, conv) == []


async def test_auth_refresh_swaps_token_same_user_only(live: LiveServer) -> None:
    rest, reg, token = await account(live)
    r = await rest.call("POST", "/api/v1/auth/refresh", json={"refreshToken": reg["refreshToken"]})
    fresh = r.json()["accessToken"]
    _, _, other = await account(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("auth.refresh", {"accessToken": other})
        err = await ws.recv()
        assert err["data"]["code"] == "AUTH_INVALID"
        await ws.send("auth.refresh", {"accessToken": fresh})
        ready = await ws.recv()
        assert ready["type"] == "session.ready" and ready["data"]["userId"] == reg["user"]["id"]


async def test_revoked_session_closes_4500(live: LiveServer) -> None:
    rest, _, token = await account(live)
    async with connect(live.ws_url, token) as ws:
        r = await rest.call("POST", "/api/v1/auth/logout", token=token)
        assert r.status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv(timeout=5)
        assert closed.value.reason.code == 4500


async def test_connection_cap_per_user_4504(live: LiveServer) -> None:
    _, _, token = await account(live)
    async with (
        connect(live.ws_url, token),
        connect(live.ws_url, token),
        connect(live.ws_url, token),
        open_websocket_url(live.ws_url, subprotocols=["chat.v1", f"bearer.{token}"]) as ws,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
        assert closed.value.reason.code == 4504


async def test_pings_answered_keep_the_connection(live: LiveServer) -> None:
    _, _, token = await account(live)
    async with connect(live.ws_url, token) as ws:
        await trio.sleep(2.0)  # four server pings, answered by the client library
        await ws.send("ping")
        assert (await ws.recv())["type"] == "pong"


async def _raw_upgrade(live: LiveServer, token: str) -> tuple[trio.SocketStream, Any]:
    """A bare wsproto client (it answers nothing by itself): the upgrade request sent."""
    import wsproto
    from wsproto.events import Request

    stream = await trio.open_tcp_stream("127.0.0.1", live.port)
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(
        conn.send(
            Request(host="127.0.0.1", target="/ws", subprotocols=["chat.v1", f"bearer.{token}"])
        )
    )
    return stream, conn


async def test_silent_peer_is_dropped(live: LiveServer) -> None:
    """A client that never answers pings is dropped (pong deadline)."""
    from wsproto.events import AcceptConnection, CloseConnection, Ping, TextMessage

    _, _, token = await account(live)
    stream, conn = await _raw_upgrade(live, token)
    pings = 0
    closed_code = None
    with trio.fail_after(10):
        while closed_code is None:
            data = await stream.receive_some(65536)
            if not data:
                break
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    assert event.subprotocol == "chat.v1"
                elif isinstance(event, TextMessage):
                    assert orjson.loads(event.data)["type"] == "session.ready"
                elif isinstance(event, Ping):
                    pings += 1  # and never answer
                elif isinstance(event, CloseConnection):
                    closed_code = event.code
    await stream.aclose()
    assert pings >= 1
    assert closed_code == 1011


async def test_the_server_pings_at_accept_and_every_interval(live: LiveServer) -> None:
    """The pings come from the connection sweeper through the writer (not Hypercorn's
    ping task): one at accept, ahead of ``session.ready``, then one per
    ``ping_interval`` (0.5 s here), each answered."""
    from wsproto.events import AcceptConnection, Ping, TextMessage

    _, _, token = await account(live)
    stream, conn = await _raw_upgrade(live, token)
    seen: list[str] = []
    pings: list[float] = []
    with trio.move_on_after(2.2):
        while True:
            data = await stream.receive_some(65536)
            assert data, "the server closed a connection that answers its pings"
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    seen.append("accept")
                elif isinstance(event, TextMessage):
                    seen.append(orjson.loads(event.data)["type"])
                elif isinstance(event, Ping):
                    seen.append("ping")
                    pings.append(trio.current_time())
                    await stream.send_all(conn.send(event.response()))
    await stream.aclose()
    assert seen[:3] == ["accept", "ping", "session.ready"], seen
    assert 3 <= len(pings) <= 6, pings  # then about every 0.5 s
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(g > 0.15 for g in gaps), gaps  # one at a time, never a burst


async def test_chat_send_rate_limit_per_user(live: LiveServer) -> None:
    _, _, token = await account(live)
    async with connect(live.ws_url, token) as ws:
        for _ in range(5):
            result = await ws.turn(str(uuid.uuid4()), "hello?")
            assert result.errors[0]["data"]["code"] == "NOT_FOUND"
        limited = await ws.turn(str(uuid.uuid4()), "hello?")
    err = limited.errors[0]["data"]
    assert err["code"] == "RATE_LIMITED" and err["class"] == "RLIMIT"
    assert err["retryable"] is True and 0 < err["retryAfterMs"] <= 60_000


async def _send_refused_then_closed(ws: Any, conv: str) -> None:
    """A chat.send on a revoked session: its error (AUTH_INVALID, its requestId), then 4500."""
    await ws.send(
        "chat.send",
        {"conversationId": conv, "messageId": str(uuid.uuid4()), "content": "still here?"},
        request_id="late",
    )
    err = await ws.recv()
    assert err["type"] == "error" and err["requestId"] == "late"
    assert err["data"]["code"] == "AUTH_INVALID"
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.reason.code == 4500


async def _stored_in(live: LiveServer, conv: str) -> int:
    import sqlalchemy as sa

    from store.schema import messages

    assert live.svc is not None
    return int(
        await live.svc.db.read(
            lambda c: c.execute(
                sa.select(sa.func.count())
                .select_from(messages)
                .where(messages.c.conversation_id == conv)
            ).scalar_one()
        )
    )


async def test_a_send_asks_the_database_about_its_session_in_the_turn_start(
    live: LiveServer,
) -> None:
    """Neither the deny-list nor this process knows the session (revoked behind its back, the
    few seconds of trust passed): the turn start's own transaction refuses it, the error comes
    first, then the close; the session goes back on the deny-list; nothing is stored."""
    import sqlalchemy as sa

    from server.auth.identity import deny_key
    from store.schema import sessions

    rest, _, token = await account(live)
    conv = await rest.conversation(token)
    assert live.svc is not None
    svc = live.svc
    sid = svc.keyring.verify(token).sid
    async with connect(live.ws_url, token) as ws:
        svc.live_sessions.clear()  # a live session, asked in the start: the turn runs
        first = await ws.turn(conv, "still mine?")
        assert first.errors == [] and first.done is not None
        assert sid in svc.live_sessions  # ... and trusted again for a few seconds
        await svc.db.tx(
            lambda c: c.execute(
                sessions.update().where(sessions.c.id == sid).values(revoked_at=sa.func.now())
            )
        )
        svc.live_sessions.clear()
        await _send_refused_then_closed(ws, conv)
    assert sid not in svc.live_sessions
    assert await trio.to_thread.run_sync(live.run_async, svc.cache.get, deny_key(sid)) is not None
    assert await _stored_in(live, conv) == 2  # the first turn's two messages, nothing more


async def test_revoked_session_frame_gets_error_then_4500(live: LiveServer) -> None:
    """The deny-list check on a frame that starts work (not the pub/sub close): the error
    comes first, then the close."""
    from server.auth.identity import deny_key

    rest, _, token = await account(live)
    conv = await rest.conversation(token)
    assert live.svc is not None
    sid = live.svc.keyring.verify(token).sid
    async with connect(live.ws_url, token) as ws:
        # deny-listed without the revocation broadcast
        await trio.to_thread.run_sync(live.run_async, live.svc.cache.set, deny_key(sid), b"1", 60.0)
        await _send_refused_then_closed(ws, conv)
    assert await _stored_in(live, conv) == 0  # nothing started for a revoked session
