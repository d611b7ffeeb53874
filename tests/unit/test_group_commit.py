"""store.batch.GroupCommit: requests that arrive together share one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import trio

from store.batch import GroupCommit
from store.db import Database


class FakeDb:
    """``tx`` runs the function at once, after ``gate`` opens (one at a time)."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.calls = 0

    async def tx(self, fn: Callable[[Any], Any], *, multi_statements: bool = False) -> Any:
        self.calls += 1
        self.multi_statements = multi_statements
        await self.gate.wait()
        return fn("conn")


def make(
    db: FakeDb, batches: list[list[int]], *, batch_max: int = 64, **kw: Any
) -> GroupCommit[int, int]:
    def run(conn: Any, batch: list[int]) -> list[int]:
        assert conn == "conn"
        batches.append(list(batch))
        if any(r < 0 for r in batch):
            raise ValueError("a negative request fails its batch")
        return [r * 10 for r in batch]

    return GroupCommit(cast(Database, db), run, batch_max=batch_max, **kw)


async def test_requests_arriving_during_a_flush_share_the_next_batch() -> None:
    db, batches = FakeDb(), []  # type: ignore[var-annotated]
    gc = make(db, batches)
    results: dict[int, int] = {}

    async def submit(nursery: trio.Nursery, r: int) -> None:
        results[r] = await gc.submit(nursery, r)

    async with trio.open_nursery() as nursery:
        for r in range(5):
            nursery.start_soon(submit, nursery, r)
        await trio.testing.wait_all_tasks_blocked()
        db.gate.set()
    assert results == {r: r * 10 for r in range(5)}
    # the first request's flush took what had arrived when it began: all five
    assert [sorted(b) for b in batches] == [[0, 1, 2, 3, 4]] and db.calls == 1


async def test_batches_are_at_most_batch_max_and_in_arrival_order() -> None:
    db, batches = FakeDb(), []  # type: ignore[var-annotated]
    gc = make(db, batches, batch_max=2)
    results: list[int] = []
    arrived: list[int] = []

    async def submit(nursery: trio.Nursery, r: int) -> None:
        arrived.append(r)
        results.append(await gc.submit(nursery, r))

    async with trio.open_nursery() as nursery:
        for r in range(5):
            nursery.start_soon(submit, nursery, r)
        await trio.testing.wait_all_tasks_blocked()
        db.gate.set()
    assert batches == [arrived[0:2], arrived[2:4], arrived[4:]]
    assert sorted(results) == [0, 10, 20, 30, 40]


async def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    db, batches = FakeDb(), []  # type: ignore[var-annotated]
    gc = make(db, batches, batch_max=2)
    outcome: dict[int, Any] = {}

    async def submit(nursery: trio.Nursery, r: int) -> None:
        try:
            outcome[r] = await gc.submit(nursery, r)
        except ValueError as exc:
            outcome[r] = exc

    async with trio.open_nursery() as nursery:
        for r in (1, -1, 3):
            nursery.start_soon(submit, nursery, r)
        await trio.testing.wait_all_tasks_blocked()
        db.gate.set()
    failed = next(b for b in batches if -1 in b)
    assert [len(b) for b in batches] == [2, 1]
    for r in (1, -1, 3):
        if r in failed:
            assert isinstance(outcome[r], ValueError)
        else:
            assert outcome[r] == r * 10
    # and a later request starts a new flush
    async with trio.open_nursery() as nursery:
        assert await gc.submit(nursery, 7) == 70


async def test_on_commit_sees_each_batch_before_any_requester_wakes() -> None:
    db, batches = FakeDb(), []  # type: ignore[var-annotated]
    seen: list[tuple[list[int], list[int]]] = []
    woke_after: list[int] = []
    gc = make(db, batches, on_commit=lambda reqs, res: seen.append((list(reqs), list(res))))

    async def submit(nursery: trio.Nursery, r: int) -> None:
        await gc.submit(nursery, r)
        woke_after.append(len(seen))

    db.gate.set()
    async with trio.open_nursery() as nursery:
        for r in range(3):
            nursery.start_soon(submit, nursery, r)
    assert [(sorted(reqs), sorted(res)) for reqs, res in seen] == [([0, 1, 2], [0, 10, 20])]
    assert woke_after == [1, 1, 1]


@pytest.mark.parametrize("size", [0, 1])
async def test_a_result_count_that_does_not_match_fails_the_batch(size: int) -> None:
    db = FakeDb()
    db.gate.set()
    gc: GroupCommit[int, int] = GroupCommit(
        cast(Database, db), lambda conn, batch: [0] * size, batch_max=8
    )
    outcome: list[Any] = []

    async def submit(nursery: trio.Nursery, r: int) -> None:
        try:
            outcome.append(await gc.submit(nursery, r))
        except ValueError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        for r in range(2):
            nursery.start_soon(submit, nursery, r)
    assert len(outcome) == 2 and all(isinstance(o, ValueError) for o in outcome)
