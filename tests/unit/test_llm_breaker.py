"""CircuitBreaker state machine (pure; a hand-driven clock)."""

from __future__ import annotations

import pytest

from server.llm.resilience import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, seen: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        threshold=5, cooldown=30.0, clock=clock, on_state=seen.append if seen is not None else None
    )


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(4):
        assert b.allow()
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_in() == pytest.approx(30.0)


def test_success_resets_the_count(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(4):
        b.record_failure()
    b.record_success()
    for _ in range(4):
        b.record_failure()
    assert b.state is BreakerState.CLOSED
    assert b.consecutive_failures == 4


def test_half_open_after_cooldown_allows_one_trial(clock: FakeClock) -> None:
    seen: list[BreakerState] = []
    b = make(clock, seen)
    for _ in range(5):
        b.record_failure()
    clock.now += 29.9
    assert not b.allow()
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the trial
    assert not b.allow()  # only one at a time
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert b.allow() and b.allow()
    assert seen == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_half_open_failure_reopens_for_a_new_cooldown(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(5):
        b.record_failure()
    clock.now += 30
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.now += 29
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_release_frees_the_trial_slot_without_a_verdict(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(5):
        b.record_failure()
    clock.now += 30
    assert b.allow()
    b.release()
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()


def test_stale_failure_while_open_does_not_extend_the_cooldown(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(5):
        b.record_failure()
    clock.now += 20
    b.record_failure()  # a call that started before the breaker opened
    clock.now += 10
    assert b.allow()


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


async def test_default_clock_is_trio_time() -> None:
    b = CircuitBreaker(threshold=1, cooldown=0.05)
    b.record_failure()
    assert not b.allow()
    import trio

    await trio.sleep(0.06)
    assert b.allow()
