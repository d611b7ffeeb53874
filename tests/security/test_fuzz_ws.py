"""Fuzzing the WebSocket over a real socket (Hypothesis; strategies in fuzzing.py).

``PARLEY_FUZZ_EXAMPLES`` examples per backend (default 6,000: 12,000 in ``make test``;
``make fuzz`` runs 100,000 per backend). Properties: no crash (the server answers
``/healthz`` and ``/readyz`` after), no stuck connection (every frame is followed by a ping
whose pong must arrive within 10 s), no 5xx on REST afterwards, no row written from an
invalid frame, every refusal a documented error frame (each frame the server sends is
checked against the contract's models) or a documented close code.
"""

from __future__ import annotations

import os
import time

import httpx
import orjson
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings

from protocol.close_codes import CloseCode
from protocol.codec import validate_server_frame
from protocol.errors import ErrorCode
from server.ws.connection import WsConfig
from store.schema import conversations, messages
from tests.security.fuzzing import CONV, Portal, frames
from tests.support.live import LiveServer

EXAMPLES = int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "6000"))
UNLIMITED = 10**9
# Every budget out of the way, so each example meets the parser and the handlers, not a
# limit (the limits have their own tests); the invalid-frame rule too (4509 is tested in
# tests/e2e/test_ws_protocol.py).
LIVE_WS_CONFIG = WsConfig(
    invalid_frames_limit=UNLIMITED,
    pings_per_minute=UNLIMITED,
    resumes_per_minute=UNLIMITED,
    abuse_rate_limited=UNLIMITED,
)
LIVE_SETTINGS = {"chat_sends_per_user_per_minute": UNLIMITED}
DOCUMENTED_CLOSES = {int(c) for c in CloseCode}
ERROR_CODES = {c.value for c in ErrorCode}


def _rows(live: LiveServer, user_id: str) -> int:
    assert live.svc is not None
    q = (
        sa.select(sa.func.count())
        .select_from(messages.join(conversations, conversations.c.id == messages.c.conversation_id))
        .where(conversations.c.user_id == user_id)
    )
    with live.svc.db.engine.connect() as c:
        return int(c.execute(q).scalar_one())


def test_fuzz_frames_over_a_real_socket(live: LiveServer) -> None:
    http = httpx.Client(base_url=live.http_url, timeout=10)
    email = f"fuzz-{time.time_ns()}@example.com"
    r = http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": "fuzzing pass 1"},
        headers={"X-Forwarded-For": f"10.{time.time_ns() % 250}.9.9"},  # the sign-up budget
    )
    assert r.status_code == 201
    token, user_id = r.json()["accessToken"], r.json()["user"]["id"]
    auth = {"Authorization": f"Bearer {token}"}
    conv = http.post("/api/v1/conversations", json={}, headers=auth).json()["id"]
    stats = {"examples": 0, "errors": 0, "closes": 0}

    with Portal(live.ws_url, token) as portal:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(frame=frames)
        def run(frame: str | bytes) -> None:
            if isinstance(frame, str):
                frame = frame.replace(CONV, conv)
            got, closed = portal.exchange(frame)
            stats["examples"] += 1
            for text in got:
                reply = validate_server_frame(text)  # the contract's shape, or it raises
                if reply.type.value == "error":
                    stats["errors"] += 1
                    assert orjson.loads(text)["data"]["code"] in ERROR_CODES
            if closed is not None:
                stats["closes"] += 1
                assert closed in DOCUMENTED_CLOSES, closed
                size = len(frame.encode() if isinstance(frame, str) else frame)
                assert closed == 1009 and size > 65_536, (closed, size)

        run()
    print(f"fuzz: {stats}, reconnects {portal.reconnects}")
    assert stats["examples"] >= EXAMPLES
    # the server still serves, REST answers without a 5xx, nothing was stored
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    for path in ("/api/v1/me", "/api/v1/conversations", f"/api/v1/conversations/{conv}/messages"):
        assert http.get(path, headers=auth).status_code == 200
    assert http.get(f"/api/v1/conversations/{conv}/messages", headers=auth).json()["items"] == []
    assert _rows(live, user_id) == 0
    http.close()
