"""The sweeper's check of one connection (server/ws/connection.py ``check_connection``):
pong deadline, token expiry and slow consumer, with the clocks read once per sweep."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio

from server.auth.tokens import AccessClaims
from server.metrics import Metrics
from server.ws.connection import WsConfig, check_connection
from server.ws.heartbeat import HeartbeatState
from server.ws.state import Connection

NOW = 1_000_000.0  # a wall clock, seconds


def _conn(exp: float = NOW + 600) -> Connection:
    claims = AccessClaims("u", "s", "guest", "user", int(NOW) - 10, int(exp), "j")
    return Connection(
        id="c", user_id="u", session_id="s", claims=claims, heartbeat=HeartbeatState()
    )


def _dropped(svc: Any, reason: str) -> float:
    return float(svc.metrics.ws_dropped.labels(reason)._value.get())


async def test_each_deadline_closes_with_its_code_at_the_given_clocks() -> None:
    svc: Any = SimpleNamespace(metrics=Metrics())
    cfg = WsConfig(pong_timeout=10.0, stall_timeout=10.0)
    now = trio.current_time()

    fine = _conn()
    fine.heartbeat.outstanding_since = 100.0  # type: ignore[union-attr]
    check_connection(svc, fine, cfg, now, wall=NOW, mono=109.0)
    assert not fine.closing.is_set()

    late = _conn()
    late.heartbeat.outstanding_since = 100.0  # type: ignore[union-attr]
    check_connection(svc, late, cfg, now, wall=NOW, mono=110.5)
    assert (late.close_code, late.close_reason) == (1011, "PING_TIMEOUT")
    assert _dropped(svc, "pong_timeout") == 1

    expired = _conn(exp=NOW)
    check_connection(svc, expired, cfg, now, wall=NOW, mono=0.0)
    assert (expired.close_code, expired.close_reason) == (4001, "AUTH_EXPIRED")

    slow = _conn()
    slow.outbox.over_since = now - 10.0
    check_connection(svc, slow, cfg, now, wall=NOW, mono=0.0)
    assert slow.close_code == 4008 and _dropped(svc, "slow_consumer") == 1

    # without the sweep's clocks, the connection reads them itself
    assert HeartbeatState().overdue(0.0) is False
    check_connection(svc, _conn(exp=0), cfg, now)
    assert _dropped(svc, "token_expired") == 2
