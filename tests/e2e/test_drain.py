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
