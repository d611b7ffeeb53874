"""The sweeper's check of one connection (server/ws/connection.py ``check_connection``):
pong deadline, token expiry and slow consumer, with the clocks read once per sweep."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from protocol.outgoing import server_draining
from server.auth.tokens import AccessClaims
from server.metrics import Metrics
from server.ws.connection import WsConfig, check_connection, next_check, sweep_connections
from server.ws.heartbeat import HeartbeatState
from server.ws.hub import MAX_AHEAD, Hub
from server.ws.outbox import Outbox
from server.ws.state import CLOSE_GRACE, Connection
from store.cache import MemoryCacheEngine

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
    # (a cache: the sweeper renews the sockets' presence every 20 s)
    svc: Any = SimpleNamespace(metrics=Metrics(), instance_id="i", cache=MemoryCacheEngine())
    cfg = WsConfig(stall_timeout=5.0)  # sweeps every second
    hub = Hub(tick=cfg.sweep_seconds)
    conn = _conn(exp=time.time() + 3600)
    conn.outbox = Outbox(max_frames=1)
    hub.add(conn)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep_connections, svc, hub, cfg)
        # settled first: after its first sweep the connection waits for its next deadline
        # (its ping, 25 s away), not in the watched set
        await trio.sleep(2 * cfg.sweep_seconds)
        assert hub.due(trio.current_time()) == [] and hub.scheduled() == 1
        start = trio.current_time()
        conn.outbox.push_frame(server_draining(1000))
        conn.outbox.push_frame(server_draining(1000))  # over the bound (one frame)
        assert conn.outbox.over_since == start
        # the writer reads nothing: the queue stays over; a close gives the connection's
        # scope its deadline, CLOSE_GRACE after the close
        with trio.CancelScope() as conn.scope:
            await trio.sleep_forever()
        assert conn.close_by is not None
        closed_at = conn.close_by - CLOSE_GRACE - start
        nursery.cancel_scope.cancel()
    assert conn.close_code == 4008
    assert 5.0 <= closed_at <= 5.0 + cfg.sweep_seconds


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


def test_a_connection_is_looked_at_when_its_next_deadline_comes() -> None:
    cfg = WsConfig(ping_interval=25.0, pong_timeout=10.0)
    conn = _conn(exp=NOW + 600)
    hb = conn.heartbeat
    assert hb is not None
    hb.last_ping, mono, now = 1000.0, 1003.0, 50.0  # mono and trio clocks differ
    assert next_check(conn, cfg, now, NOW, mono) == now + 22.0  # its next ping
    hb.outstanding_since = 1001.0
    assert next_check(conn, cfg, now, NOW, mono) == now + 8.0  # its pong's deadline
    hb.outstanding_since = None
    conn.claims = AccessClaims("u", "s", "guest", "user", int(NOW) - 10, int(NOW) + 5, "j")
    assert next_check(conn, cfg, now, NOW, mono) == now + 5.0  # its token's expiry
    hb.last_ping = 1000.0 + 3600  # pings off, say
    conn.claims = _conn(exp=NOW + 7200).claims
    assert next_check(conn, cfg, now, NOW, mono) == now + MAX_AHEAD
    conn.heartbeat = None
    assert next_check(conn, cfg, now, NOW, mono) == now + MAX_AHEAD


def test_the_hub_hands_out_each_connection_when_its_slot_comes() -> None:
    hub = Hub(tick=2.0)
    a, b, c = _conn(), _conn(), _conn()
    for conn in (a, b, c):
        hub.add(conn)
    assert set(hub.due(10.0)) == {a, b, c}  # new ones: the next sweep looks at them
    assert set(hub.due(10.0)) == {a, b, c}  # ... until the sweeper stops watching them
    for conn in (a, b, c):
        hub.unwatch(conn)
    hub.schedule(a, 13.0)  # the slot ending at 14 s
    hub.schedule(b, 14.0)
    hub.schedule(c, 30.0)
    assert hub.due(12.0) == [] and hub.scheduled() == 3
    assert set(hub.due(14.5)) == {a, b} and hub.scheduled() == 1
    assert hub.due(15.0) == []  # taken out: the sweeper schedules them again
    hub.schedule(c, 20.0)  # moved: no longer in its old slot
    assert hub.due(20.0) == [c] and hub.due(31.0) == []
    hub.schedule(a, 5.0)  # a time already past: the next sweep
    assert hub.due(31.0) == [a]


async def test_a_removed_connection_is_never_handed_out_again() -> None:
    hub = Hub(tick=2.0)
    conn = _conn()
    hub.add(conn)
    hub.unwatch(conn)
    hub.schedule(conn, 4.0)
    hub.remove(conn)
    assert hub.due(100.0) == [] and hub.scheduled() == 0 and hub.count() == 0
    assert conn.sweep_slot is None and conn.outbox.on_over is None  # nothing keeps it
    conn.outbox = Outbox(max_frames=1)
    conn.outbox.push_frame(server_draining(1000))
    conn.outbox.push_frame(server_draining(1000))  # over, with no hub to tell
    assert hub.due(100.0) == []


async def test_a_sweep_looks_only_at_the_connections_whose_deadline_came() -> None:
    svc: Any = SimpleNamespace(metrics=Metrics())
    cfg = WsConfig(ping_interval=25.0)
    hub = Hub(tick=cfg.sweep_seconds)
    conns = [_conn(exp=time.time() + 3600) for _ in range(50)]
    mono = time.monotonic()
    for i, conn in enumerate(conns):
        assert conn.heartbeat is not None
        conn.heartbeat.last_ping = mono - 25.0 if i < 5 else mono  # five pings due now
        hub.add(conn)
    visited: list[Connection] = []
    original = check_connection

    def counting(svc: Any, conn: Connection, *args: Any) -> None:
        visited.append(conn)
        original(svc, conn, *args)

    import server.ws.connection as connection_module

    connection_module.check_connection = counting  # type: ignore[assignment]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sweep_connections, svc, hub, cfg, 0.05)
            await trio.sleep(0.12)  # two sweeps: the first looks at all (new), then none
            nursery.cancel_scope.cancel()
    finally:
        connection_module.check_connection = original  # type: ignore[assignment]
    assert len(visited) == 50
    assert sum(1 for c in conns if c.heartbeat and c.heartbeat.ping_due) == 5
    assert hub.scheduled() == 50
