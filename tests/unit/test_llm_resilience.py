"""ResilientUpstream: retries only before the first token, timeouts per phase,
breaker integration. A scripted in-test Provider and trio's autojump MockClock
(pure trio code, no threads)."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from server.llm import (
    BreakerState,
    ChatMessage,
    ResilientUpstream,
    StreamEnd,
    TokenDelta,
    UpstreamError,
    UpstreamPolicy,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.llm.base import StreamEvent

MSGS = [ChatMessage("user", "hi")]
FOREVER = math.inf

# A script step: ("tok", text) | ("sleep", seconds) | ("raise", error) | ("end", reason)
Step = tuple[str, Any]


def ok(*words: str, gap: float = 0.0) -> list[Step]:
    steps: list[Step] = []
    for w in words:
        if gap:
            steps.append(("sleep", gap))
        steps.append(("tok", w))
    return [*steps, ("end", "stop")]


def fail(status: int = 500, after: list[Step] | None = None) -> list[Step]:
    err = UpstreamError(f"boom {status}", retryable=status >= 500 or status == 429, status=status)
    return [*(after or []), ("raise", err)]


@dataclass
class ScriptedProvider:
    """Each call to stream() plays the next script (the last one repeats)."""

    scripts: list[list[Step]]
    calls: int = 0
    open_streams: int = 0
    closed: int = 0
    max_tokens_seen: list[int] = field(default_factory=list)

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Any:
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        self.max_tokens_seen.append(max_tokens)
        return self._cm(script)

    @asynccontextmanager
    async def _cm(self, script: list[Step]) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        self.open_streams += 1
        gen = self._play(script)
        try:
            yield gen
        finally:
            await gen.aclose()
            self.open_streams -= 1
            self.closed += 1

    async def _play(self, script: list[Step]) -> AsyncGenerator[StreamEvent, None]:
        for kind, arg in script:
            if kind == "sleep":
                await trio.sleep(arg)
            elif kind == "tok":
                yield TokenDelta(arg)
            elif kind == "raise":
                raise arg
            elif kind == "end":
                yield StreamEnd(arg, None)
                return

    async def aclose(self) -> None:
        pass


POLICY = UpstreamPolicy(
    first_token_timeout=1.0,
    gap_timeout=2.0,
    total_timeout=30.0,
    max_retries=2,
    backoff_base=0.25,
    backoff_max=4.0,
    breaker_threshold=5,
    breaker_cooldown=30.0,
)


@dataclass
class Recorder:
    first_token: list[float] = field(default_factory=list)
    retries: list[tuple[int, UpstreamError]] = field(default_factory=list)
    states: list[BreakerState] = field(default_factory=list)


def upstream(
    p: ScriptedProvider, policy: UpstreamPolicy = POLICY, rec: Recorder | None = None
) -> ResilientUpstream:
    rec = rec or Recorder()
    return ResilientUpstream(
        p,
        policy,
        on_first_token=rec.first_token.append,
        on_retry=lambda n, e: rec.retries.append((n, e)),
        on_breaker_state=rec.states.append,
        rng=random.Random(1),
    )


DRIVE = False  # set per test by the ``mode`` fixture: read by ``Call.drive`` or ``async for``


@pytest.fixture(autouse=True, params=["iterate", "drive"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs both ways of reading a call: the same timeouts, retries, verdicts."""
    global DRIVE
    DRIVE = request.param == "drive"
    yield str(request.param)
    DRIVE = False


async def drain(
    up: ResilientUpstream, max_tokens: int = 100
) -> tuple[list[StreamEvent], BaseException | None]:
    got: list[StreamEvent] = []

    def take(event: StreamEvent) -> bool:
        got.append(event)
        return False

    try:
        async with up.stream(MSGS, max_tokens=max_tokens) as events:
            if DRIVE:
                await events.drive(take)
            else:
                async for e in events:
                    got.append(e)
    except UpstreamError as exc:
        return got, exc
    return got, None


async def test_passes_events_through(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([[("sleep", 0.4), *ok("a", "b")]])
    rec = Recorder()
    got, err = await drain(upstream(p, rec=rec), max_tokens=77)
    assert err is None
    assert got == [TokenDelta("a"), TokenDelta("b"), StreamEnd("stop", None)]
    assert p.max_tokens_seen == [77]
    assert rec.first_token == [pytest.approx(0.4)]
    assert p.open_streams == 0


async def test_retries_before_first_token_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([fail(500), fail(429), ok("x")])
    rec = Recorder()
    up = upstream(p, rec=rec)
    t0 = trio.current_time()
    got, err = await drain(up)
    assert err is None and got == [TokenDelta("x"), StreamEnd("stop", None)]
    assert p.calls == 3 and p.closed == 3
    assert [n for n, _ in rec.retries] == [1, 2]
    assert [e.status for _, e in rec.retries] == [500, 429]
    # equal-jitter backoff: retry 1 in [0.125, 0.25], retry 2 in [0.25, 0.5]
    assert 0.375 <= trio.current_time() - t0 <= 0.75
    assert rec.first_token[0] == pytest.approx(trio.current_time() - t0)
    assert up.breaker.state is BreakerState.CLOSED and up.breaker.consecutive_failures == 0


async def test_gives_up_after_max_retries(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([fail(503)])
    got, err = await drain(upstream(p))
    assert isinstance(err, UpstreamError) and err.status == 503
    assert got == [] and p.calls == 3


async def test_no_retry_after_first_token(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([fail(500, after=[("tok", "partial")]), ok("never")])
    got, err = await drain(upstream(p))
    assert got == [TokenDelta("partial")]
    assert isinstance(err, UpstreamError) and err.status == 500
    assert p.calls == 1 and p.open_streams == 0


async def test_non_retryable_is_not_retried_nor_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([fail(400)])
    up = upstream(p)
    for _ in range(6):
        _, err = await drain(up)
        assert isinstance(err, UpstreamError) and err.status == 400 and not err.retryable
    assert p.calls == 6
    assert up.breaker.state is BreakerState.CLOSED and up.breaker.consecutive_failures == 0


async def test_first_token_timeout_each_attempt(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([[("sleep", FOREVER)]])
    t0 = trio.current_time()
    rec = Recorder()
    _got, err = await drain(upstream(p, rec=rec))
    assert isinstance(err, UpstreamTimeout) and err.phase == "first_token"
    assert p.calls == 3 and p.open_streams == 0
    elapsed = trio.current_time() - t0
    assert 3.0 + 0.375 <= elapsed <= 3.0 + 0.75
    assert [type(e) for _, e in rec.retries] == [UpstreamTimeout, UpstreamTimeout]


async def test_gap_timeout_after_tokens(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([[("tok", "a"), ("sleep", 1.9), ("tok", "b"), ("sleep", FOREVER)]])
    t0 = trio.current_time()
    got, err = await drain(upstream(p))
    assert got == [TokenDelta("a"), TokenDelta("b")]
    assert isinstance(err, UpstreamTimeout) and err.phase == "gap"
    # driven, the deadline moves lazily: up to gap_slack (here 2 s / 20) later, never earlier
    late = 0.1 if DRIVE else 0.0
    assert trio.current_time() - t0 == pytest.approx(3.9 + late)
    assert p.calls == 1


async def test_slow_consumer_does_not_count_as_gap(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([ok("a", "b", "c")])
    async with upstream(p).stream(MSGS, max_tokens=10) as events:
        n = 0
        async for _ in events:
            n += 1
            await trio.sleep(5)  # longer than gap_timeout, but the upstream was not waited on
    assert n == 4


async def test_total_timeout(autojump_clock: trio.testing.MockClock) -> None:
    policy = UpstreamPolicy(first_token_timeout=1, gap_timeout=1, total_timeout=3)
    p = ScriptedProvider([ok(*"abcdefghij", gap=0.5)])
    t0 = trio.current_time()
    got, err = await drain(upstream(p, policy))
    assert isinstance(err, UpstreamTimeout) and err.phase == "total"
    assert trio.current_time() - t0 == pytest.approx(3.0)
    assert len(got) == 5


async def test_backoff_stops_at_total_deadline(autojump_clock: trio.testing.MockClock) -> None:
    policy = UpstreamPolicy(first_token_timeout=2, total_timeout=2.1, backoff_base=1, max_retries=5)
    p = ScriptedProvider([[("sleep", FOREVER)]])
    _got, err = await drain(upstream(p, policy))
    assert isinstance(err, UpstreamTimeout) and err.phase == "first_token"
    assert p.calls == 1  # the backoff would cross the total deadline


async def test_retry_after_is_honoured_up_to_backoff_max(
    autojump_clock: trio.testing.MockClock,
) -> None:
    err = UpstreamError("slow down", retryable=True, status=429, retry_after=3.0)
    p = ScriptedProvider([[("raise", err)], ok("x")])
    t0 = trio.current_time()
    _, e = await drain(upstream(p))
    assert e is None
    assert trio.current_time() - t0 == pytest.approx(3.0)


def test_backoff_bounds() -> None:
    rng = random.Random(0)
    for retry, (lo, hi) in {1: (0.125, 0.25), 2: (0.25, 0.5), 3: (0.5, 1.0), 9: (2.0, 4.0)}.items():
        for _ in range(50):
            assert lo <= POLICY.backoff(retry, rng) <= hi


async def test_breaker_opens_after_five_failures_and_fails_fast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = UpstreamPolicy(max_retries=0, breaker_threshold=5, breaker_cooldown=30)
    p = ScriptedProvider([fail(502)])
    rec = Recorder()
    up = upstream(p, policy, rec)
    for _ in range(5):
        _, err = await drain(up)
        assert isinstance(err, UpstreamError) and not isinstance(err, UpstreamUnavailable)
    assert rec.states == [BreakerState.OPEN]
    t0 = trio.current_time()
    _, err = await drain(up)
    assert isinstance(err, UpstreamUnavailable)
    assert trio.current_time() == t0  # fail fast
    assert p.calls == 5  # the upstream was not called


async def test_retries_count_as_failures_and_stop_when_the_breaker_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = UpstreamPolicy(max_retries=2, breaker_threshold=2)
    p = ScriptedProvider([fail(500)])
    _, err = await drain(upstream(p, policy))
    assert isinstance(err, UpstreamUnavailable)
    assert p.calls == 2


async def test_half_open_recovery(autojump_clock: trio.testing.MockClock) -> None:
    policy = UpstreamPolicy(max_retries=0, breaker_threshold=5, breaker_cooldown=30)
    p = ScriptedProvider([fail(500)] * 5 + [[("sleep", 1.0), *ok("back")]])
    rec = Recorder()
    up = upstream(p, policy, rec)
    for _ in range(5):
        await drain(up)
    await trio.sleep(30)
    results: dict[str, Any] = {}

    async def trial() -> None:
        results["trial"] = await drain(up)

    async def second() -> None:
        await trio.sleep(0.5)  # while the trial is in flight
        results["second"] = await drain(up)

    async with trio.open_nursery() as n:
        n.start_soon(trial)
        n.start_soon(second)
    assert results["trial"] == ([TokenDelta("back"), StreamEnd("stop", None)], None)
    assert isinstance(results["second"][1], UpstreamUnavailable)
    assert rec.states == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert (await drain(up))[1] is None


async def test_half_open_failure_reopens(autojump_clock: trio.testing.MockClock) -> None:
    policy = UpstreamPolicy(max_retries=2, breaker_threshold=1, breaker_cooldown=10)
    p = ScriptedProvider([fail(500)])
    up = upstream(p, policy)
    await drain(up)
    assert up.breaker.state is BreakerState.OPEN
    await trio.sleep(10)
    _, err = await drain(up)  # the trial fails; no retry gets through the re-opened breaker
    assert isinstance(err, UpstreamUnavailable)
    assert p.calls == 2
    assert up.breaker.state is BreakerState.OPEN


async def test_cancelled_trial_releases_the_slot(autojump_clock: trio.testing.MockClock) -> None:
    policy = UpstreamPolicy(max_retries=0, breaker_threshold=1, breaker_cooldown=10)
    p = ScriptedProvider([fail(500), [("sleep", 5.0), *ok("z")]])
    up = upstream(p, policy)
    await drain(up)
    await trio.sleep(10)
    with trio.move_on_after(1):  # the caller gives up (e.g. chat.cancel)
        await drain(up)
    assert p.open_streams == 0
    assert up.breaker.state is BreakerState.HALF_OPEN
    got, err = await drain(up)
    assert err is None and got[0] == TokenDelta("z")


async def test_leaving_early_closes_the_provider_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([ok("a", "b", "c")])
    up = upstream(p)
    async with up.stream(MSGS, max_tokens=3) as events:
        async for _ in events:
            break  # e.g. the runner's 64 KiB cut
    assert p.open_streams == 0 and p.closed == 1
    assert up.breaker.consecutive_failures == 0


async def test_entering_without_iterating_calls_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([ok("a")])
    async with upstream(p).stream(MSGS, max_tokens=3):
        pass
    assert p.calls == 0


async def test_provider_bug_becomes_upstream_error(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([[("raise", KeyError("oops"))]])
    _, err = await drain(upstream(p))
    assert isinstance(err, UpstreamError) and not err.retryable
    assert isinstance(err.__cause__, KeyError)
    assert p.calls == 1


async def test_stream_ending_without_end_event_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([[("tok", "a")], ok("b")])
    got, err = await drain(upstream(p))
    # the token of the first attempt was yielded, so there is no retry: error after "a"
    assert got == [TokenDelta("a")] and isinstance(err, UpstreamError)
    p2 = ScriptedProvider([[], ok("b")])
    got, err = await drain(upstream(p2))
    assert err is None and got[0] == TokenDelta("b") and p2.calls == 2


async def test_driven_the_gap_is_caught_within_the_slack_after_the_last_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # tokens 0.03 s apart (closer than the 0.1 s slack), then a stall
    p = ScriptedProvider([[*[("tok", "t"), ("sleep", 0.03)] * 20, ("sleep", FOREVER)]])
    got: list[StreamEvent] = []
    last = 0.0

    def take(event: StreamEvent) -> bool:
        nonlocal last
        got.append(event)
        last = trio.current_time()
        return False

    with pytest.raises(UpstreamTimeout) as caught:
        async with upstream(p).stream(MSGS, max_tokens=10) as call:
            await call.drive(take)
    assert caught.value.phase == "gap" and len(got) == 20
    assert 2.0 <= trio.current_time() - last <= 2.0 + 0.1 + 1e-9


async def test_driven_the_callback_stops_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    p = ScriptedProvider([ok("a", "b", "c")])
    up = upstream(p)
    got: list[StreamEvent] = []

    def take(event: StreamEvent) -> bool:
        got.append(event)
        return len(got) == 2  # e.g. the runner's 64 KiB cut

    async with up.stream(MSGS, max_tokens=3) as call:
        await call.drive(take)
        await call.drive(take)  # a finished call hands out nothing more
    assert got == [TokenDelta("a"), TokenDelta("b")]
    assert p.open_streams == 0 and p.closed == 1
    assert up.breaker.consecutive_failures == 0


async def test_driven_a_fault_of_the_callback_is_not_an_upstream_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    p = ScriptedProvider([ok("a", "b")])
    up = upstream(p)

    def take(_event: StreamEvent) -> bool:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        async with up.stream(MSGS, max_tokens=3) as call:
            await call.drive(take)
    assert p.calls == 1 and p.open_streams == 0  # not retried, the stream closed
    assert up.breaker.consecutive_failures == 0
