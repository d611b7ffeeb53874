"""Upstream faults through the whole server: timeouts with retries, failures mid-stream,
the circuit breaker opening (fail fast, nothing stored) and closing again."""

from __future__ import annotations

import re

import trio

from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect

LIVE_SETTINGS = {
    "sim_fault_injection": True,
    "upstream_first_token_timeout": 0.4,
    "upstream_gap_timeout": 0.4,
    "upstream_total_timeout": 20.0,
    "upstream_max_retries": 2,
    "upstream_breaker_threshold": 5,
    "upstream_breaker_cooldown": 1.5,
}


async def metric(rest: Rest, name: str) -> float:
    text = (await rest.call("GET", "/metrics")).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_fault_sequence(live: LiveServer) -> None:
    rest = Rest(live.http_url)
    reg = await rest.register()
    token = reg["accessToken"]
    conv = await rest.conversation(token)
    retries_before = await metric(rest, "parley_upstream_retries_total")

    async with connect(live.ws_url, token) as ws:
        # 1. no first token: two retries, then UPSTREAM_TIMEOUT and chat.done failed
        stalled = await ws.turn(conv, "[[sim:stall_first=5]] anyone there?")
        assert stalled.errors[0]["data"]["code"] == "UPSTREAM_TIMEOUT"
        assert stalled.errors[0]["data"]["class"] == "UPSTREAM"
        assert stalled.errors[0]["data"]["retryable"] is True
        assert stalled.done is not None and stalled.done["data"]["status"] == "failed"
        assert stalled.streams == [] and stalled.done["data"]["lastChunk"] == -1
        assert await metric(rest, "parley_upstream_retries_total") - retries_before == 2

        # 2. nothing reached the client, so a retry with a new messageId is not a duplicate
        retry = await ws.turn(conv, "[[sim:stall_first=5]] anyone there?")
        assert retry.ack["data"]["duplicate"] is False
        # its second attempt is the fifth straight failure: the breaker opens and the
        # last retry is not made
        assert retry.errors[0]["data"]["code"] == "UPSTREAM_UNAVAILABLE"
        assert retry.done is not None and retry.done["data"]["status"] == "failed"
        assert await metric(rest, "parley_upstream_retries_total") - retries_before == 3

        # 3. the breaker is open: sends fail fast, before anything is stored
        assert await metric(rest, "parley_upstream_breaker_open") == 1
        rows_before = len(await rest.history(token, conv))
        fast = await ws.turn(conv, "are you back?")
        assert fast.errors[0]["data"]["code"] == "UPSTREAM_UNAVAILABLE"
        assert fast.errors[0]["data"]["retryAfterMs"] > 0
        assert len(await rest.history(token, conv)) == rows_before

        # 4. after the cooldown a trial goes through, succeeds, and closes the breaker
        await trio.sleep(1.6)
        ok = await ws.turn(conv, "and now?")
        assert ok.done is not None and ok.done["data"]["status"] == "completed"
        assert await metric(rest, "parley_upstream_breaker_open") == 0

        # 5. failure after tokens were sent: no retry, chat.done failed, partial text kept
        partial = await ws.turn(conv, "[[sim:fail_after=3]] start then fail")
        assert partial.errors[0]["data"]["code"] == "UPSTREAM_ERROR"
        assert partial.done is not None
        assert partial.done["data"]["status"] == "failed"
        assert partial.done["data"]["finishReason"] == "error"
        assert partial.done["data"]["lastChunk"] == 2

    history = await rest.history(token, conv)
    statuses = [(m["role"], m["status"]) for m in history]
    assert statuses == [("user", "completed"), ("assistant", "failed")] * 2 + [
        ("user", "completed"),
        ("assistant", "completed"),
        ("user", "completed"),
        ("assistant", "failed"),
    ]
    assert history[1]["content"] == "" and history[-1]["content"] == partial.text
    assert len(partial.text.split()) == 3
