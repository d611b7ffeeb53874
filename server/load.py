"""How busy this process is: the event loop's lag, measured, not guessed.

A task sleeps 50 ms at a time and records how late it wakes. A loop that wakes
late is short of CPU: then the writers coalesce deltas harder (fewer frames,
less CPU per token); an idle or lightly loaded process never delays a frame.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["LoadMonitor"]


class LoadMonitor:
    def __init__(self, *, threshold: float = 0.010, period: float = 0.05) -> None:
        self.threshold = threshold
        self.period = period
        self.lag = 0.0  # smoothed seconds late per wake-up

    @property
    def under_pressure(self) -> bool:
        return self.lag > self.threshold

    def record(self, late: float) -> None:
        # Rise fast, fall slowly: one slow wake-up is enough to start coalescing.
        weight = 0.5 if late > self.lag else 0.1
        self.lag += weight * (late - self.lag)

    async def run(self, on_sample: Callable[[float], None] | None = None) -> None:
        while True:
            start = trio.current_time()
            await trio.sleep(self.period)
            self.record(max(0.0, trio.current_time() - start - self.period))
            if on_sample is not None:
                on_sample(self.lag)
