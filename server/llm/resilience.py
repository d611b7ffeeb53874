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

The turn runner reads through `Call.drive(on_event)` instead of `async for`: one
cancel scope per attempt whose deadline moves at most every `gap_slack` seconds,
where iterating enters a scope per event (a few µs each, at 10,000 tokens a second).

The caller (the turn runner) enforces the 4,096-token / 64 KiB answer cut
itself: it passes `max_tokens` through and stops iterating when over 64 KiB.
"""

from __future__ import annotations

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
from .breaker import BreakerState, CircuitBreaker

__all__ = ["BreakerState", "Call", "CircuitBreaker", "ResilientUpstream", "UpstreamPolicy"]

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
    ) -> AbstractAsyncContextManager[Call]:
        return self._stream(messages, max_tokens)

    @asynccontextmanager
    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[Call]:
        if not self.breaker.allow():
            raise UpstreamUnavailable(
                f"upstream unavailable (circuit open, retry in {self.breaker.retry_in():.1f}s)"
            )
        call = Call(self, messages, max_tokens)
        try:
            yield call
        finally:
            await call.aclose()

    def unavailable_for(self) -> float:
        """Seconds the breaker will still skip the upstream (0: calls go through)."""
        return self.breaker.retry_in()

    async def aclose(self) -> None:
        await self.provider.aclose()


class Call:
    """One resilient call: an async iterator whose `__anext__` holds each cancel
    scope only around one await (never across a yield), as trio requires; or, on the
    hot path, :meth:`drive`."""

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

    def __aiter__(self) -> Call:
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
            return await self._pull()
        assert scope.cancelled_caught
        raise UpstreamTimeout(phase, secs)

    async def _pull(self) -> StreamEvent:
        """Open the attempt if needed and await one event (the caller holds the deadline);
        whatever goes wrong is an :class:`UpstreamError`."""
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
                await self._failed(err)  # raises, or returns after the backoff: retry
                continue
            self._took(event)
            return event

    def _took(self, event: StreamEvent) -> None:
        """Bookkeeping for an event handed to the caller: the end's verdict, the first
        token's time."""
        if isinstance(event, StreamEnd):
            self._finished = True
            self._verdict("success")
        elif isinstance(event, TokenDelta) and not self._yielded:
            self._yielded = True
            if self._o.on_first_token is not None:
                self._o.on_first_token(trio.current_time() - self._start)

    async def _failed(self, err: UpstreamError) -> None:
        """An attempt failed: raise ``err`` (or ``UpstreamUnavailable``), or back off and
        return for a retry."""
        await self._close_attempt()
        counts = err.retryable  # non-retryable (4xx) says nothing about health
        self._verdict("failure" if counts else "neutral")
        if self._yielded or not err.retryable or self._attempt > self._policy.max_retries:
            self._finished = True
            raise err
        await self._backoff(err)

    async def drive(self, on_event: Callable[[StreamEvent], bool]) -> None:
        """Hand every event to ``on_event`` (synchronous: it cannot await, so the
        deadline can only fire while the upstream is awaited) until the stream ends or
        ``on_event`` returns True. The same timeouts, retries and verdicts as iterating.

        The gap deadline moves lazily: at most every ``gap_slack`` seconds
        (``min(0.25 s, gap_timeout / 20)``), to ``last move + gap_timeout + gap_slack``.
        A stall is thus caught between ``gap_timeout`` and ``gap_timeout + gap_slack``
        after the last event, never earlier; the total deadline stays exact."""
        while not self._finished:
            try:
                await self._drive_attempt(on_event)
            except UpstreamUnavailable:
                self._finished = True
                raise
            except UpstreamError as err:
                await self._failed(err)

    async def _drive_attempt(self, on_event: Callable[[StreamEvent], bool]) -> None:
        p = self._policy
        if self._events is None:
            self._attempt_start = trio.current_time()
        deadline, _phase, _secs = self._deadline()
        gap, total = p.gap_timeout, self._total_deadline
        slack = min(0.25, gap / 20)
        next_move = -float("inf")
        with trio.CancelScope(deadline=deadline) as scope:
            while True:
                event = await self._pull()
                self._took(event)
                if on_event(event) or self._finished:
                    self._finished = True
                    return
                now = trio.current_time()
                if now >= next_move:
                    next_move = now + slack
                    scope.deadline = min(now + gap + slack, total)
        # the deadline passed while the upstream was awaited
        if scope.deadline >= total:
            raise UpstreamTimeout("total", p.total_timeout)
        if self._yielded:
            raise UpstreamTimeout("gap", gap)
        raise UpstreamTimeout("first_token", p.first_token_timeout)

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
