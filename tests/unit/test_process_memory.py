"""A server process's memory settings (``server/process.py``): glibc's arenas capped
unless the operator set ``MALLOC_ARENA_MAX`` (then glibc applied theirs and Parley leaves
it); the cyclic collector's thresholds; start-up objects frozen."""

from __future__ import annotations

import gc
import platform
import weakref
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from server import process


def test_the_cap_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert process.limit_malloc_arenas() is on_glibc


def test_an_operators_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")

    def no_libc(name: str | None) -> None:
        raise AssertionError("libc must not be touched")

    monkeypatch.setattr(process.ctypes, "CDLL", no_libc)
    assert process.limit_malloc_arenas() is False


def test_without_mallopt_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(process.ctypes, "CDLL", lambda name: object())  # a libc without it
    assert process.limit_malloc_arenas() is False


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    gc.enable()


@pytest.mark.usefixtures("gc_state")
def test_gc_thresholds_are_raised() -> None:
    process.tune_gc()
    assert gc.get_threshold() == process.GC_THRESHOLDS
    assert process.GC_THRESHOLDS[0] > 700  # CPython's default


@pytest.mark.usefixtures("gc_state")
def test_startup_objects_are_frozen_after_a_collection() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.disable()  # no automatic collection before the one under test
    garbage = weakref.ref(Cycle())  # only the cycle keeps it alive
    assert garbage() is not None
    before = gc.get_freeze_count()
    process.freeze_startup_objects()
    assert gc.get_freeze_count() > before
    assert garbage() is None  # collected first, not frozen forever


@pytest.mark.usefixtures("gc_state")
async def test_garbage_is_collected_on_a_timer_and_all_of_it_every_fourth_time(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected: list[tuple[int, int]] = []
    freed = iter([0, 0, 0, 5_000] + [0] * 3 + [0] + [0] * 7 + [0] + [0] * 15 + [5_000] * 5)
    start = trio.current_time()

    def collect(generation: int = 2) -> int:
        collected.append((round((trio.current_time() - start) / process.GC_PERIOD), generation))
        return next(freed)

    monkeypatch.setattr(process.gc, "collect", collect)
    with trio.move_on_after(36 * process.GC_PERIOD + 1):
        await process.collect_garbage_periodically()
    fulls = [t for t, g in collected if g == 2]
    assert len(collected) == 36 and all(g == 1 for t, g in collected if t not in fulls)
    # every 4th; one that frees much keeps the pace, one that frees little doubles the wait
    assert fulls == [4, 8, 16, 32, 36]


@pytest.mark.usefixtures("gc_state")
async def test_a_timed_collection_frees_a_cycle_the_thresholds_would_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.disable()  # as if the allocation count never reached a threshold
    garbage = weakref.ref(Cycle())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(process.collect_garbage_periodically, 1.0, 2)
        await trio.sleep(0.5)
        assert garbage() is not None
        await trio.sleep(1.0)  # one collection of the younger generations
        assert garbage() is None
        nursery.cancel_scope.cancel()
