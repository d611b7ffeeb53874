"""Stopping the server while a turn streams: the turn ends `interrupted`, its text so far
stored, before the process lets go of the database."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import trio

from server.auth.passwords import PasswordService
from store.db import create_db_engine
from store.schema import messages
from tests.conftest import BACKENDS, make_settings
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect


@pytest.mark.parametrize("backend", BACKENDS)
async def test_shutdown_interrupts_and_stores_turns(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fast_passwords: PasswordService,
) -> None:
    settings = make_settings(
        backend, request, tmp_path, ws_upgrades_per_ip_per_hour=10**6, sim_fault_injection=True
    )
    server = LiveServer(settings, fast_passwords).start()
    try:
        rest = Rest(server.http_url)
        reg = await rest.register()
        conv = await rest.conversation(reg["accessToken"])
        async with connect(server.ws_url, reg["accessToken"]) as ws:
            await ws.send(
                "chat.send",
                {
                    "conversationId": conv,
                    "messageId": "5e0b1c1e-2a7b-4a52-8f0e-8c5c1f3f9d10",
                    "content": "[[sim:tokens=400,tps=40]] long story",
                },
            )
            await ws.recv_type("chat.ack")
            for _ in range(5):
                await ws.recv_type("chat.stream")
    finally:
        await trio.to_thread.run_sync(server.stop)
    engine = create_db_engine(settings.database_url, pool_size=1)
    try:
        with engine.connect() as c:
            row = c.execute(
                sa.select(messages.c.status, messages.c.content, messages.c.finish_reason).where(
                    messages.c.conversation_id == conv, messages.c.seq == 2
                )
            ).one()
    finally:
        engine.dispose()
    assert row.status == "interrupted" and row.finish_reason == "interrupted"
    assert len(row.content.split()) >= 5  # the text that streamed is kept
