"""Timeouts, retries and a circuit breaker around a Provider.

`ResilientUpstream.stream()` has the Provider shape: an async context manager
giving an async iterator of `TokenDelta`... `StreamEnd`. It

- fails fast with `UpstreamUnavailable` when the breaker is open (on entering
  the `async with`, or before a retry attempt);
- bounds each attempt's wait for its first token (`first_token_timeout`), each
  wait between two deltas (`gap_timeout`) and the whole call including retries
  and backoff (`total_timeout`), with trio cancel scopes; a breach raises
  `UpstreamTimeout(phase)`;
- retries retryable failures (5xx, 429, connection faults, timeouts) with
  jittered exponential backoff, only while no token was yielded to the caller;
  after the first token every failure propagates.

The caller (the turn runner) enforces the 4,096-token / 64 KiB answer cut
itself: it passes `max_tokens` through and stops iterating when over 64 KiB.
"""

from __future__ import annotations

import enum
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    suppress,
)
from dataclasses import dataclass
from typing import Literal

import trio

from .base import (
    ChatMessage,
    Provider,
    StreamEnd,
    StreamEvent,
    TimeoutPhase,
    TokenDelta,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["BreakerState", "CircuitBreaker", "ResilientUpstream", "UpstreamPolicy"]

_CLEANUP_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    first_token_timeout: float = 20.0
    gap_timeout: float = 30.0
    total_timeout: float = 180.0
    max_retries: int = 2
    backoff_base: float = 0.25
    backoff_max: float = 4.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number `retry` (1-based): "equal jitter", uniformly in
        [d/2, d] with d = min(backoff_max, backoff_base * 2**(retry-1))."""
        d = min(self.backoff_max, self.backoff_base * (2 ** (retry - 1)))
        return rng.uniform(d / 2, d)


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


Outcome = Literal["success", "failure", "neutral"]


class ResilientUpstream:
    """Wraps a Provider with the policy's timeouts, retries and the breaker.

    Callbacks (for metrics; keep them cheap, they run inline):
    `on_first_token(seconds)` from the start of the call (retries and backoff
    included) to the first delta; `on_retry(attempt, error)` before retry
    `attempt` (1-based) sleeps its backoff; `on_breaker_state(state)` on every
    breaker transition.
    """

    def __init__(
        self,
        provider: Provider,
        policy: UpstreamPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        on_first_token: Callable[[float], None] | None = None,
        on_retry: Callable[[int, UpstreamError], None] | None = None,
        on_breaker_state: Callable[[BreakerState], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self.policy = policy or UpstreamPolicy()
        self.breaker = breaker or CircuitBreaker(
            self.policy.breaker_threshold, self.policy.breaker_cooldown
        )
        if on_breaker_state is not None:
            self.breaker.on_state = on_breaker_state
        self.on_first_token = on_first_token
        self.on_retry = on_retry
        self.rng = rng or random.Random()

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamEvent]]:
        return self._stream(messages, max_tokens)

    @asynccontextmanager
    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        if not self.breaker.allow():
            raise UpstreamUnavailable(
                f"upstream unavailable (circuit open, retry in {self.breaker.retry_in():.1f}s)"
            )
        call = _Call(self, messages, max_tokens)
        try:
            yield call
        finally:
            await call.aclose()

    def unavailable_for(self) -> float:
        """Seconds the breaker will still skip the upstream (0: calls go through)."""
        return self.breaker.retry_in()

    async def aclose(self) -> None:
        await self.provider.aclose()


class _Call:
    """One resilient call: an async iterator whose `__anext__` holds each cancel
    scope only around one await (never across a yield), as trio requires."""

    def __init__(
        self, owner: ResilientUpstream, messages: Sequence[ChatMessage], max_tokens: int
    ) -> None:
        self._o = owner
        self._messages = messages
        self._max_tokens = max_tokens
        self._policy = owner.policy
        self._start = trio.current_time()
        self._total_deadline = self._start + self._policy.total_timeout
        self._attempt = 0  # attempts started
        self._slot_held = True  # the breaker's allow() taken on entry
        self._stack: AsyncExitStack | None = None
        self._events: AsyncIterator[StreamEvent] | None = None
        self._attempt_start = 0.0
        self._yielded = False
        self._finished = False
        self._verdict_given = False

    def __aiter__(self) -> _Call:
        return self

    # -- breaker bookkeeping: one verdict per attempt ---------------------------
    def _verdict(self, outcome: Outcome) -> None:
        if self._verdict_given:
            return
        self._verdict_given = True
        self._slot_held = False
        breaker = self._o.breaker
        if outcome == "success":
            breaker.record_success()
        elif outcome == "failure":
            breaker.record_failure()
        else:
            breaker.release()

    async def _close_attempt(self) -> None:
        stack, self._stack, self._events = self._stack, None, None
        if stack is not None:
            # Shielded (the caller may be cancelled) but bounded.
            with trio.move_on_after(_CLEANUP_SECONDS) as scope, suppress(Exception):
                scope.shield = True
                await stack.aclose()

    async def _open_attempt(self) -> None:
        if not self._slot_held:
            if not self._o.breaker.allow():
                raise UpstreamUnavailable()
            self._slot_held = True
        self._attempt += 1
        self._verdict_given = False
        self._attempt_start = trio.current_time()
        stack = AsyncExitStack()
        self._stack = stack
        self._events = await stack.enter_async_context(
            self._o.provider.stream(self._messages, max_tokens=self._max_tokens)
        )

    def _deadline(self) -> tuple[float, TimeoutPhase, float]:
        p = self._policy
        deadline: float
        phase: TimeoutPhase
        if not self._yielded:
            deadline, phase, secs = (
                self._attempt_start + p.first_token_timeout,
                "first_token",
                p.first_token_timeout,
            )
        else:
            deadline, phase, secs = trio.current_time() + p.gap_timeout, "gap", p.gap_timeout
        if self._total_deadline <= deadline:
            return self._total_deadline, "total", p.total_timeout
        return deadline, phase, secs

    async def _next_from_upstream(self) -> StreamEvent:
        """Open the attempt if needed and await one event, under the deadline."""
        if self._events is None:
            self._attempt_start = trio.current_time()
        deadline, phase, secs = self._deadline()
        with trio.move_on_at(deadline) as scope:
            try:
                if self._events is None:
                    await self._open_attempt()
                assert self._events is not None
                return await self._events.__anext__()
            except StopAsyncIteration:
                raise UpstreamError(
                    "upstream stream ended without an end event", retryable=True
                ) from None
            except UpstreamError:
                raise
            except Exception as exc:  # a provider bug: still one error type for the caller
                raise UpstreamError(f"upstream client failed: {exc!r}", retryable=False) from exc
        assert scope.cancelled_caught
        raise UpstreamTimeout(phase, secs)

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        while True:
            try:
                event = await self._next_from_upstream()
            except UpstreamUnavailable:
                self._finished = True
                raise
            except UpstreamError as err:
                await self._close_attempt()
                counts = err.retryable  # non-retryable (4xx) says nothing about health
                self._verdict("failure" if counts else "neutral")
                if self._yielded or not err.retryable or self._attempt > self._policy.max_retries:
                    self._finished = True
                    raise
                await self._backoff(err)
                continue
            if isinstance(event, StreamEnd):
                self._finished = True
                self._verdict("success")
                return event
            if isinstance(event, TokenDelta) and not self._yielded:
                self._yielded = True
                if self._o.on_first_token is not None:
                    self._o.on_first_token(trio.current_time() - self._start)
            return event

    async def _backoff(self, err: UpstreamError) -> None:
        retry = self._attempt  # attempts so far == number of the coming retry
        delay = self._policy.backoff(retry, self._o.rng)
        if err.retry_after is not None:
            delay = max(delay, min(err.retry_after, self._policy.backoff_max))
        if trio.current_time() + delay >= self._total_deadline:
            self._finished = True
            raise err
        if self._o.breaker.state is BreakerState.OPEN:
            # This failure opened the breaker: no retry, and no pointless backoff first.
            self._finished = True
            raise UpstreamUnavailable()
        if self._o.on_retry is not None:
            self._o.on_retry(retry, err)
        await trio.sleep(delay)

    async def aclose(self) -> None:
        if self._events is not None or self._slot_held:
            # Caller left early (or was cancelled): tokens already flowing prove the
            # upstream healthy; before any token there is no verdict.
            if self._events is not None:
                self._verdict("success" if self._yielded else "neutral")
            elif self._slot_held:
                self._slot_held = False
                self._o.breaker.release()
        self._finished = True
        await self._close_attempt()
