"""A server process's memory settings (``server/process.py``): glibc's arenas capped
unless the operator set ``MALLOC_ARENA_MAX`` (then glibc applied theirs and Parley leaves
it); the cyclic collector's thresholds; start-up objects frozen."""

from __future__ import annotations

import gc
import platform
import weakref
from collections.abc import Iterator

import pytest

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
