"""The sweeper's check of one connection (server/ws/connection.py ``check_connection``):
pong deadline, token expiry and slow consumer, with the clocks read once per sweep."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from server.auth.tokens import AccessClaims
from server.metrics import Metrics
from server.ws.connection import WsConfig, check_connection, sweep_connections
from server.ws.heartbeat import HeartbeatState
from server.ws.hub import Hub
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
    assert not fine.closing

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


def test_the_sweep_interval_is_a_fifth_of_the_shorter_deadline_within_bounds() -> None:
    assert WsConfig().sweep_seconds == 2.0  # pong 10 s, stall 10 s
    assert WsConfig(pong_timeout=1.0).sweep_seconds == 0.2
    assert WsConfig(stall_timeout=3.0, pong_timeout=30.0).sweep_seconds == 0.6
    assert WsConfig(pong_timeout=0.1).sweep_seconds == 0.05
    assert WsConfig(pong_timeout=60.0, stall_timeout=60.0).sweep_seconds == 2.0


async def test_a_stalled_outbox_is_closed_within_a_fifth_of_the_stall_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc: Any = SimpleNamespace(metrics=Metrics())
    cfg = WsConfig(stall_timeout=10.0)
    hub = Hub()
    conn = _conn(exp=time.time() + 3600)
    hub.add(conn)
    start = trio.current_time()
    conn.outbox.over_since = start
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep_connections, svc, hub, cfg)
        while not conn.closing:  # a close seals the outbox, which wakes its waiter
            await conn.outbox.wait()
        closed_at = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert conn.close_code == 4008
    assert 10.0 <= closed_at <= 10.0 + cfg.sweep_seconds


def test_pings_fall_due_every_interval_without_drifting() -> None:
    hb = HeartbeatState()
    hb.last_ping = 0.0
    assert hb.schedule(25.0, 10.0) is False and not hb.ping_due
    assert hb.schedule(25.0, 25.5) is True
    assert hb.ping_due and hb.outstanding_since == 25.5 and hb.last_ping == 25.0
    hb.pong_received()
    assert hb.schedule(25.0, 49.0) is False
    assert hb.schedule(25.0, 51.0) is True and hb.last_ping == 50.0  # a sweep late: no drift
    assert hb.schedule(25.0, 200.0) is True and hb.last_ping == 200.0  # far behind: restart
    # an unanswered ping keeps its deadline: the next one does not move it
    assert hb.outstanding_since == 51.0


async def test_the_writer_sends_a_due_ping_once() -> None:
    sent: list[int] = []

    async def send_event(_event: object) -> None:
        sent.append(1)

    hb = HeartbeatState(SimpleNamespace(closed=False, _send_wsproto_event=send_event))
    await hb.send_due_ping()
    assert sent == []
    hb.due_now(time.monotonic())
    assert hb.outstanding_since is not None
    await hb.send_due_ping()
    await hb.send_due_ping()
    assert sent == [1] and not hb.ping_due


async def test_the_sweep_marks_a_due_ping_and_wakes_the_writer() -> None:
    svc: Any = SimpleNamespace(metrics=Metrics())
    cfg = WsConfig(ping_interval=25.0)
    conn = _conn()
    hb = conn.heartbeat
    assert hb is not None
    hb.last_ping = 1000.0
    check_connection(svc, conn, cfg, trio.current_time(), wall=NOW, mono=1010.0)
    assert not hb.ping_due
    woken = trio.Event()

    async def writer_waiting() -> None:  # nothing queued: the writer sleeps here
        await conn.outbox.wait()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer_waiting)
        await trio.testing.wait_all_tasks_blocked()
        check_connection(svc, conn, cfg, trio.current_time(), wall=NOW, mono=1025.0)
        with trio.fail_after(1):
            await woken.wait()
    assert hb.ping_due and hb.outstanding_since == 1025.0 and not conn.closing
