"""Per-connection frame budgets and the rule for sustained abuse (close 4029).

``chat.send`` is limited per user across instances (the cache's atomic ``hit_rate``);
``chat.resume`` and ``ping`` cost little each but can be sent in bulk (200 resumes asked
for 2,000 replayed frames in a third of a second), so each connection gets a budget of its
own, in-process: nothing to share, nothing to fail open.

Sustained abuse: a client that keeps sending after ``RATE_LIMITED``. Once a connection has
had ``abuse_rate_limited`` ``RATE_LIMITED`` answers within ``abuse_window`` seconds
(settings ``PARLEY_WS_ABUSE_RATE_LIMITED``, ``PARLEY_WS_ABUSE_WINDOW_SECONDS``: 10 in
60 s), it is closed with 4029; the client may reconnect after ``retryAfterMs``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio

from protocol.errors import ErrorCode, ProtocolError

__all__ = ["FrameBudget", "Window"]


@dataclass
class Window:
    """At most ``limit`` events in any ``seconds``-long window (a sliding log)."""

    limit: int
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def hit(self, now: float) -> float | None:
        """Count one event: None if allowed, else the seconds until one would be."""
        while self.times and now - self.times[0] >= self.seconds:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return self.seconds - (now - self.times[0])
        self.times.append(now)
        return None


@dataclass
class FrameBudget:
    """One connection's budgets: resumes, pings, and its count of RATE_LIMITED answers."""

    resumes: Window
    pings: Window
    refusals: Window

    @classmethod
    def per_minute(
        cls, *, resumes: int, pings: int, abuse_limit: int, abuse_window: float
    ) -> FrameBudget:
        return cls(Window(resumes, 60.0), Window(pings, 60.0), Window(abuse_limit, abuse_window))

    def take(self, window: Window, what: str) -> None:
        """Spend one frame of ``window``; ``RATE_LIMITED`` with ``retryAfterMs`` past it."""
        wait = window.hit(trio.current_time())
        if wait is not None:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many {what} frames on this connection; slow down",
                retry_after_ms=max(1, int(wait * 1000)),
            )

    def sustained(self) -> bool:
        """Count one RATE_LIMITED answer; True once they are sustained abuse (close 4029)."""
        return self.refusals.hit(trio.current_time()) is not None
