"""The SIGTERM drain (contract section 5) on a live server: readiness and upgrades refused,
server.draining to everyone, a turn cut after the grace ends interrupted with its chat.done
before the 1012 close, sends refused with SERVER_DRAINING."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from server.auth.passwords import PasswordService
from store.schema import messages
from tests.conftest import BACKENDS, make_settings
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect


@pytest.mark.parametrize("backend", BACKENDS)
async def test_drain_sequence(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, fast_passwords: PasswordService
) -> None:
    settings = make_settings(
        backend,
        request,
        tmp_path,
        drain_seconds=0.5,
        ws_upgrades_per_ip_per_hour=10**6,
        sim_fault_injection=True,
    )
    server = LiveServer(settings, fast_passwords).start()
    try:
        rest = Rest(server.http_url)
        reg = await rest.register()
        token = reg["accessToken"]
        conv = await rest.conversation(token)
        other = await rest.conversation(token)
        async with (
            connect(server.ws_url, token) as streaming,
            connect(server.ws_url, token) as idle,
        ):
            await streaming.send(
                "chat.send",
                {
                    "conversationId": conv,
                    "messageId": str(uuid.uuid4()),
                    "content": "[[sim:tokens=400,tps=40]] a long answer",
                },
                request_id="long",
            )
            await streaming.recv_type("chat.ack")
            await streaming.recv_type("chat.stream")
            async with trio.open_nursery() as n:
                n.start_soon(trio.to_thread.run_sync, server.drain)
                hello = await idle.recv_type("server.draining")
                assert hello["data"]["reconnectAfterMs"] > 0 and hello["requestId"] is None
                async with httpx.AsyncClient() as http:
                    ready = await http.get(f"{server.http_url}/readyz")
                assert ready.status_code == 503
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(
                        server.ws_url, subprotocols=["chat.v1", f"bearer.{token}"]
                    ):
                        pass
                assert rejected.value.status_code == 503
                refused = await idle.turn(other, "one more?")
                assert refused.errors[0]["data"]["code"] == "SERVER_DRAINING"
                assert refused.errors[0]["data"]["retryable"] is True
                frames = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        frames.append(await streaming.recv())
                assert closed.value.reason.code == 1012
                with pytest.raises(ConnectionClosed) as closed_idle:
                    while True:
                        await idle.recv()
                assert closed_idle.value.reason.code == 1012
        kinds = [f["type"] for f in frames]
        assert "server.draining" in kinds
        done = [f for f in frames if f["type"] == "chat.done"]
        assert len(done) == 1 and done[0]["data"]["status"] == "interrupted"
        assert done[0]["requestId"] == "long"
        assert server.svc is not None
        row = await server.svc.db.read(
            lambda c: c.execute(
                sa.select(messages.c.status, messages.c.content).where(
                    messages.c.conversation_id == conv, messages.c.seq == 2
                )
            ).one()
        )
        assert row.status == "interrupted" and row.content
        assert len(row.content.split()) == done[0]["data"]["lastChunk"] + 1
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_session_ready_is_first_even_when_a_drain_starts_during_the_handshake(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fast_passwords: PasswordService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by benchmarks/rolling_upgrade.py: a socket admitted just as its instance began
    to drain got server.draining before session.ready."""
    import threading

    import server.ws.connection as ws_connection

    settings = make_settings("sqlite", request, tmp_path, drain_seconds=0.2)
    server = LiveServer(settings, fast_passwords).start()
    try:
        token = (await Rest(server.http_url).register())["accessToken"]
        inside, release = threading.Event(), threading.Event()
        real = ws_connection.note_activity

        async def slow_activity(svc: object, user_id: str) -> None:
            inside.set()  # the socket is admitted; the handshake's last await is here
            await trio.to_thread.run_sync(release.wait)
            await real(svc, user_id)  # type: ignore[arg-type]

        monkeypatch.setattr(ws_connection, "note_activity", slow_activity)
        async with connect(server.ws_url, token, ready=False) as ws, trio.open_nursery() as n:
            await trio.to_thread.run_sync(inside.wait)
            n.start_soon(trio.to_thread.run_sync, server.drain)
            await trio.sleep(0.2)  # server.draining is queued meanwhile
            release.set()
            first = await ws.recv()
            assert first["type"] == "session.ready"
            assert (await ws.recv())["type"] == "server.draining"
    finally:
        await trio.to_thread.run_sync(server.stop)
