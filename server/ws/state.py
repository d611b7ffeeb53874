"""A WebSocket connection's state and the numbers it lives by (contract section 4)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from protocol.codec import MAX_CONTENT_CHARS, MAX_FRAME_BYTES
from server.auth.tokens import AccessClaims
from server.settings import Settings
from server.ws.abuse import FrameBudget
from server.ws.heartbeat import HeartbeatState
from server.ws.outbox import Outbox

__all__ = ["Connection", "WsConfig"]


@dataclass(frozen=True)
class WsConfig:
    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    stall_timeout: float = 10.0  # past the outbox bound this long: close 4008
    outbox_max_bytes: int = 1024 * 1024
    outbox_max_frames: int = 2048
    invalid_frames_limit: int = 10
    invalid_frames_window: float = 60.0
    max_connections_per_user: int = 10
    max_connections: int = 10_000
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_content_chars: int = MAX_CONTENT_CHARS
    drain_reconnect_ms: int = 1000
    # When the process is short of CPU (its event loop wakes late), a delta waits up to this
    # long for the next ones of its message, so one frame carries several: frames, not
    # tokens, are what costs CPU. 0 turns it off. A process with CPU to spare never waits.
    coalesce_seconds: float = 0.04
    # Per-connection frame budgets and sustained abuse (server/ws/abuse.py)
    resumes_per_minute: int = 30
    pings_per_minute: int = 60
    abuse_rate_limited: int = 10
    abuse_window: float = 60.0

    @property
    def sweep_seconds(self) -> float:
        """How often the sweeper checks every connection: a fifth of the shortest of the
        ping interval and the pong and stall deadlines (2 s at the defaults), between 50 ms
        and 2 s. A deadline is acted on, and a ping sent, within a fifth of it late; a
        token's expiry within 2 s (its lifetime is at least 10 s). A sweep looks only at
        the sockets with a deadline due (server/ws/hub.py): visiting all 10,000 idle
        sockets every 0.5 s was ~4 % of a core, every 2 s 0.3-0.7 %."""
        shortest = min(self.ping_interval, self.pong_timeout, self.stall_timeout)
        return min(2.0, max(0.05, shortest / 5))

    def frame_budget(self) -> FrameBudget:
        return FrameBudget.per_minute(
            resumes=self.resumes_per_minute,
            pings=self.pings_per_minute,
            abuse_limit=self.abuse_rate_limited,
            abuse_window=self.abuse_window,
        )

    @classmethod
    def from_settings(cls, s: Settings) -> WsConfig:
        return cls(
            ping_interval=s.ws_ping_interval_seconds,
            pong_timeout=s.ws_pong_timeout_seconds,
            stall_timeout=s.ws_stall_seconds,
            outbox_max_bytes=s.ws_outbox_max_bytes,
            outbox_max_frames=s.ws_outbox_max_frames,
            invalid_frames_limit=s.ws_invalid_frames_limit,
            invalid_frames_window=s.ws_invalid_frames_window_seconds,
            max_connections_per_user=s.ws_max_connections_per_user,
            max_connections=s.ws_max_connections,
            max_frame_bytes=s.ws_max_frame_bytes,
            max_content_chars=s.max_content_chars,
            drain_reconnect_ms=s.drain_reconnect_ms,
            coalesce_seconds=s.ws_coalesce_ms / 1000,
            resumes_per_minute=s.ws_resumes_per_minute,
            pings_per_minute=s.ws_pings_per_minute,
            abuse_rate_limited=s.ws_abuse_rate_limited,
            abuse_window=s.ws_abuse_window_seconds,
        )


CLOSE_GRACE = 5.0  # the writer gets this long to deliver a decided close


@dataclass(eq=False, slots=True)
class Connection:
    id: str
    user_id: str
    session_id: str
    claims: AccessClaims
    heartbeat: HeartbeatState | None = None
    outbox: Outbox = field(default_factory=Outbox)
    close_code: int | None = None
    close_reason: str = ""
    closing: bool = False
    invalid_at: deque[float] | None = None  # made on the first invalid frame
    scope: trio.CancelScope | None = None  # the connection's; a close gives it a deadline
    close_by: float | None = None
    budget: FrameBudget | None = None  # set by the dispatcher on first use
    # for the session's access log line (server/ws/session_log.py): text frames' characters
    chars_in: int = 0
    chars_out: int = 0
    # the upgrade's W3C traceparent trace id: the trace of frames that bring none
    trace_id: str | None = None
    # the sweep slot it sits in (server/ws/hub.py), None while watched or unscheduled
    sweep_slot: int | None = None

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close after what is already queued (first request wins)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self.closing:
            self.closing = True
            self.close_by = trio.current_time() + CLOSE_GRACE
            if self.scope is not None:
                self.scope.deadline = min(self.scope.deadline, self.close_by)
        self.outbox.seal()
