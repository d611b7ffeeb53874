"""The circuit breaker of the upstream (``server.llm.resilience``): consecutive failures
open it, a cooldown later one trial call decides."""

from __future__ import annotations

import enum
from collections.abc import Callable

import trio

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker.

    CLOSED → OPEN after `threshold` failures in a row; OPEN → HALF_OPEN once
    `cooldown` seconds passed; in HALF_OPEN one trial call is allowed at a time:
    its success closes, its failure re-opens (for another `cooldown`), and
    `release()` (an outcome that says nothing about upstream health) frees the
    trial slot. `clock` defaults to `trio.current_time` (MockClock-friendly).
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
        on_state: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.on_state = on_state
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._set(BreakerState.HALF_OPEN)
            self._trial_in_flight = False
        return self._state

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_state is not None:
                self.on_state(state)

    def allow(self) -> bool:
        """May a call go to the upstream now? In HALF_OPEN this takes the trial slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until an OPEN breaker lets a trial through (0 otherwise)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.cooldown - self._clock())
        return 0.0

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._failures >= self.threshold
        ):
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)
        # Already OPEN (a call started before it opened): the cooldown is not extended.

    def release(self) -> None:
        """A call ended without a verdict on the upstream (cancelled, 4xx)."""
        self._trial_in_flight = False
