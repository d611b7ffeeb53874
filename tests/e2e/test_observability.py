"""Observability of one scripted session on a live server (both backends): sign-up, a
failed login, a turn, a cancel, an invalid frame, an upstream fault, a drop (frame too
big). Afterwards:

- ``/metrics`` is parsed and every contract-section-6 metric has the value the script
  implies (not only its presence);
- the captured output is JSON lines only, REST lines carry the request's traceparent
  trace id, the turn's lines its frame's traceId with userId, conversationId and
  messageId; one access line per request and one per WebSocket session; no email, token
  or password in clear;
- the spans (SDK in-memory exporter) have the same trace ids: the REST request, and the
  turn with its dispatched / first_token events and the upstream call as a child.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio_websocket import ConnectionClosed

from server import tracing
from server.logging import configure_logging
from tests.support.live import LiveServer
from tests.support.wsclient import WsClient, connect

LIVE_SETTINGS = {"sim_fault_injection": True, "sim_tokens_per_second": 200.0}
REST_TRACE = "0af7651916cd43dd8448eb211c80319c"
TURN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PASSWORD = "observable secret 99"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def until_closed(ws: WsClient) -> int:
    with trio.fail_after(10):
        while True:
            try:
                await ws.ws.get_message()
            except ConnectionClosed as exc:
                return int(exc.reason.code)


async def scripted_session(live: LiveServer) -> dict[str, Any]:
    email = f"Obs.{uuid.uuid4().hex[:10]}@example.com"
    seen: dict[str, Any] = {"email": email.lower(), "streams": 0}
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as http:
        r = await http.post(
            "/api/v1/auth/register",
            json={"email": email, "password": PASSWORD},
            headers={
                "traceparent": f"00-{REST_TRACE}-b7ad6b7169203331-01",
                # Redis outlives runs: a fresh address keeps the per-address limits away
                "X-Forwarded-For": ip,
            },
        )
        assert r.status_code == 201, r.text
        body = r.json()
        seen |= {"access": body["accessToken"], "refresh": body["refreshToken"]}
        seen["user"] = body["user"]["id"]
        r = await http.post(
            "/api/v1/auth/login",
            json={"email": email, "password": "wrong one"},
            headers={"X-Forwarded-For": ip},
        )
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {seen['access']}"}
        r = await http.post("/api/v1/conversations", json={"title": "obs"}, headers=auth)
        conv = seen["conv"] = r.json()["id"]

    async with connect(live.ws_url, seen["access"]) as ws:
        # 1. a turn, with the client's traceId
        mid = str(uuid.uuid4())
        await ws.send_raw(
            orjson.dumps(
                {
                    "type": "chat.send",
                    "requestId": "c-1",
                    "traceId": TURN_TRACE,
                    "data": {"conversationId": conv, "messageId": mid, "content": "hello there"},
                }
            ).decode()
        )
        while (f := await ws.recv())["type"] != "chat.done":
            seen["streams"] += f["type"] == "chat.stream"
        assert f["data"]["status"] == "completed" and f["traceId"] == TURN_TRACE
        seen["turn_message"] = f["data"]["messageId"]
        # 2. a cancel: the answer stalls after two tokens, the client stops it
        await ws.send(
            "chat.send",
            {
                "conversationId": conv,
                "messageId": str(uuid.uuid4()),
                "content": "[[sim:stall_after=2,stall_seconds=5]] wait for it",
            },
        )
        ack = await ws.recv_type("chat.ack")
        while (f := await ws.recv())["type"] != "chat.stream":
            pass
        seen["streams"] += 1
        await ws.send(
            "chat.cancel",
            {"conversationId": conv, "messageId": ack["data"]["assistantMessageId"]},
        )
        while (f := await ws.recv())["type"] != "chat.done":
            seen["streams"] += f["type"] == "chat.stream"
        assert f["data"]["status"] == "cancelled"
        # 3. an invalid frame
        await ws.send_raw("this is not json")
        err = await ws.recv_type("error")
        assert err["data"]["code"] == "VALIDATION_FAILED"
        # 4. an upstream fault after three tokens
        result = await ws.turn(conv, "[[sim:fail_after=3]] then fail")
        seen["streams"] += len(result.streams)
        assert result.errors[0]["data"]["code"] == "UPSTREAM_ERROR"
        assert result.done is not None and result.done["data"]["status"] == "failed"
        # 5. a drop: a frame over 64 KiB closes the socket with 1009
        await ws.send_raw("x" * 70_000)
        seen["close"] = await until_closed(ws)
    assert seen["close"] == 1009
    return seen


async def test_metrics_logs_and_traces_of_a_session(
    live: LiveServer, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json=True)
    capsys.readouterr()
    seen = await scripted_session(live)
    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as http:
        for _ in range(100):  # the server notices the close on its side
            m = parse_metrics((await http.get("/metrics")).text)
            if m["parley_ws_connections"] == 0:
                break
            await trio.sleep(0.05)
    out = capsys.readouterr().out

    # -- metrics: every one of contract section 6, with the value the script implies
    expected = {
        "parley_ws_connections": 0,
        'parley_ws_frames_total{direction="in",type="chat.send"}': 3,
        'parley_ws_frames_total{direction="in",type="chat.cancel"}': 1,
        'parley_ws_frames_total{direction="in",type="invalid"}': 2,
        'parley_ws_frames_total{direction="out",type="session.ready"}': 1,
        'parley_ws_frames_total{direction="out",type="chat.ack"}': 3,
        'parley_ws_frames_total{direction="out",type="chat.done"}': 3,
        'parley_ws_frames_total{direction="out",type="error"}': 2,
        'parley_ws_frames_total{direction="out",type="chat.stream"}': seen["streams"],
        'parley_turns_total{status="completed"}': 1,
        'parley_turns_total{status="cancelled"}': 1,
        'parley_turns_total{status="failed"}': 1,
        'parley_errors_total{class="VALIDATION",code="VALIDATION_FAILED"}': 1,
        'parley_errors_total{class="UPSTREAM",code="UPSTREAM_ERROR"}': 1,
        'parley_errors_total{class="AUTH",code="INVALID_CREDENTIALS"}': 1,
        "parley_dispatch_seconds_count": 3,
        'parley_dispatch_seconds_bucket{le="30.0"}': 3,
        "parley_relay_seconds_count": seen["streams"],
        "parley_upstream_first_token_seconds_count": 3,
        'parley_ws_dropped_total{reason="frame_too_big"}': 1,
        'parley_http_requests_total{route="/api/v1/auth/register",status="201"}': 1,
        'parley_http_requests_total{route="/api/v1/auth/login",status="401"}': 1,
        'parley_http_requests_total{route="/api/v1/conversations",status="201"}': 1,
        "parley_upstream_retries_total": 0,
        "parley_upstream_breaker_open": 0,
        "parley_login_failures_total": 1,
    }
    assert {k: m.get(k) for k in expected} == expected
    assert seen["streams"] >= 3
    # the histograms resolve 0.1 ms to 30 s; dispatch is far below a second here
    for h in ("dispatch", "relay", "upstream_first_token"):
        assert f'parley_{h}_seconds_bucket{{le="0.0001"}}' in m
    assert m['parley_dispatch_seconds_bucket{le="1.0"}'] == 3
    assert 0 < m["parley_dispatch_seconds_sum"] < 3
    # bounded labels: no ids in any label value
    assert not re.search(r'="[0-9a-f-]{32,36}"', "\n".join(m))
    # the process's own figures (RSS to watch for growth, descriptors against the limit)
    assert m["parley_process_resident_memory_bytes"] > 10 * 2**20
    assert 0 < m["parley_process_open_fds"] < m["parley_process_max_fds"]

    # -- logs: JSON lines, correlated, nothing secret
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events and all("event" in e and "timestamp" in e for e in events)
    register = [e for e in events if e.get("route") == "/api/v1/auth/register"]
    assert len(register) == 1 and register[0]["traceId"] == REST_TRACE
    assert register[0]["event"] == "http_access" and register[0]["status"] == 201
    assert register[0]["requestId"] and register[0]["durationMs"] >= 0
    convs = [e for e in events if e.get("route") == "/api/v1/conversations"]
    assert convs[0]["userId"] == seen["user"]
    turn = [e for e in events if e["event"] == "turn_done" and e["traceId"] == TURN_TRACE]
    assert len(turn) == 1
    assert turn[0]["userId"] == seen["user"] and turn[0]["conversationId"] == seen["conv"]
    assert turn[0]["messageId"] == seen["turn_message"] and turn[0]["status"] == "completed"
    assert {e["status"] for e in events if e["event"] == "turn_done"} == {
        "completed",
        "cancelled",
        "failed",
    }
    session = [e for e in events if e["event"] == "ws_session"]
    assert len(session) == 1 and session[0]["closeCode"] == 1009
    assert session[0]["userId"] == seen["user"] and session[0]["connectionId"]
    assert session[0]["charsIn"] > 70_000 and session[0]["charsOut"] > 0
    for secret in (seen["email"], seen["access"], seen["refresh"], PASSWORD):
        assert secret not in out
    assert seen["email"].split("@")[0] not in out

    # -- traces: the same trace ids, the turn's events, the upstream call as a child
    finished = spans.get_finished_spans()
    rest = [s for s in finished if s.name == "POST /api/v1/auth/register"]
    assert len(rest) == 1 and format(rest[0].context.trace_id, "032x") == REST_TRACE
    assert rest[0].parent is not None and format(rest[0].parent.span_id, "016x") == (
        "b7ad6b7169203331"
    )
    turns = [s for s in finished if s.name == "chat.turn"]
    traced = [s for s in turns if format(s.context.trace_id, "032x") == TURN_TRACE]
    assert len(turns) == 3 and len(traced) == 1
    t = traced[0]
    assert [e.name for e in t.events] == ["dispatched", "first_token"]
    assert t.attributes is not None and t.attributes["parley.status"] == "completed"
    up = [s for s in finished if s.name == "llm.upstream" and s.parent is not None]
    child = [s for s in up if s.parent is not None and s.parent.span_id == t.context.span_id]
    assert len(child) == 1 and child[0].context.trace_id == t.context.trace_id
    assert t.start_time is not None and child[0].start_time is not None
    assert t.start_time <= child[0].start_time and child[0].end_time <= (t.end_time or 0)
    failed = [s for s in turns if s.attributes and s.attributes["parley.status"] == "failed"]
    assert failed and failed[0].status.status_code.name == "ERROR"


async def test_upgrade_traceparent_is_the_trace_of_frames_without_one(live: LiveServer) -> None:
    from trio_websocket import open_websocket_url

    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as http:
        ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.8"
        r = await http.post("/api/v1/auth/guest", headers={"X-Forwarded-For": ip})
        token = r.json()["accessToken"]
        r = await http.post(
            "/api/v1/conversations", json={}, headers={"Authorization": f"Bearer {token}"}
        )
        conv = r.json()["id"]
    trace = "5" * 32
    async with open_websocket_url(
        live.ws_url,
        subprotocols=["chat.v1", f"bearer.{token}"],
        extra_headers=[("traceparent", f"00-{trace}-{'6' * 16}-01")],
    ) as raw:
        ws = WsClient(raw)
        assert (await ws.recv())["type"] == "session.ready"
        result = await ws.turn(conv, "hi")
        assert result.ack["traceId"] == trace and result.done is not None
        assert result.done["traceId"] == trace
        # a frame with its own traceId keeps it
        await ws.send_raw(
            orjson.dumps({"type": "ping", "requestId": "p", "traceId": "7" * 32}).decode()
        )
        assert (await ws.recv_type("pong"))["traceId"] == "7" * 32


async def test_refused_upgrades_have_their_access_line(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upgrade that never becomes a session still leaves one line: refused over HTTP
    (its status) or accepted and closed at once (its close code), and why; no token."""
    from trio_websocket import ConnectionRejected, open_websocket_url

    configure_logging("INFO", json=True)
    capsys.readouterr()
    with pytest.raises(ConnectionRejected):
        async with open_websocket_url(live.ws_url, subprotocols=["chat.v2"]):
            pass
    with pytest.raises(ConnectionRejected):
        async with connect(live.ws_url, "x", origin="https://evil.example"):
            pass
    secret = "garbage-token-" + uuid.uuid4().hex
    with pytest.raises(ConnectionClosed):
        async with connect(live.ws_url, secret, ready=False) as ws:
            await ws.recv()
    await trio.sleep(0.2)
    out = capsys.readouterr().out
    refused = [json.loads(line) for line in out.splitlines() if '"ws_refused"' in line]
    assert [(e["status"], e["closeCode"]) for e in refused] == [
        (400, None),
        (403, None),
        (None, 4500),
    ]
    assert "chat.v1" in refused[0]["reason"] and "PARLEY_ALLOWED_ORIGINS" in refused[1]["reason"]
    assert refused[2]["reason"] == "AUTH_INVALID" and secret not in out
