"""SIGTERM mid-answer, then the server starts again: the page shows it is reconnecting,
then the answer ends (the embedded default cannot hand the turn to another instance: it
ends `interrupted`, and the page says so), equal to what is stored."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.browser.conftest import BASE_ENV, Pages, Served
from tests.browser.ui import (
    answer_text,
    growing_states,
    new_conversation,
    register,
    send,
    stored_answer,
    wait_connected,
    wait_status,
    words,
)


def test_sigterm_mid_answer_then_restart(browser_ready: None, tmp_path: Path, pages: Pages) -> None:
    server = Served(tmp_path, dict(BASE_ENV)).start()
    try:
        page = pages.new()
        email = register(page, server.url)
        conv = new_conversation(page)
        send(page, "[[sim:tokens=400,tps=25]] a very long answer")
        assert len(growing_states(page, 2)) == 2
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        badge = page.locator('.conn[data-state="reconnecting"]')
        badge.wait_for(timeout=20_000)
        assert "Reconnecting" in badge.inner_text()
        assert server.proc.wait(30) == 0
        server.start()  # same port, same data folder: the same tokens still work
        wait_connected(page, timeout=30_000)
        wait_status(page, "interrupted")
        assert page.get_by_text(
            "Interrupted: the server stopped before the answer was finished."
        ).is_visible()
        stored = stored_answer(server.history(server.login(email), conv))
        assert stored["status"] == "interrupted"
        assert answer_text(page) == words(stored["content"])
        assert 0 < len(stored["content"].split()) < 400
    finally:
        server.stop()


def test_access_token_is_refreshed_in_band_without_reconnecting(
    browser_ready: None, tmp_path: Path, pages: Pages
) -> None:
    # 10 s tokens: the server closes a socket whose token expires (4001); the page refreshes
    # before that (REST rotation, then auth.refresh on the open socket), so one socket serves
    # an answer that outlives two token lifetimes.
    server = Served(tmp_path, {**BASE_ENV, "PARLEY_ACCESS_TOKEN_TTL_SECONDS": "10"}).start()
    try:
        page = pages.new()
        sockets: list[object] = []
        page.on("websocket", lambda ws: sockets.append(ws))
        email = register(page, server.url)
        conv = new_conversation(page)
        send(page, "[[sim:tokens=500,tps=22]] take your time")
        wait_status(page, "completed", timeout=45)
        assert len(sockets) == 1
        stored = stored_answer(server.history(server.login(email), conv))
        assert stored["status"] == "completed"
        assert answer_text(page) == words(stored["content"])
        assert len(stored["content"].split()) == 500
    finally:
        server.stop()
