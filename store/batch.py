"""Group commit: requests that arrive together share one transaction.

The first request to arrive while no flush runs starts one in the caller's nursery (a
server-wide one, so a requester that goes away cannot cut a flush short); every request
that arrives meanwhile waits for the next batch. A batch that fails fails each of its
requests with the same exception; nothing of it was stored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio
from sqlalchemy.engine import Connection

from store.db import Database

__all__ = ["GroupCommit"]

R = TypeVar("R")
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Slot(Generic[R, T]):
    request: R
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: Exception | None = None


class GroupCommit(Generic[R, T]):
    """``run(conn, requests)`` stores a batch in one transaction and returns one result
    per request, in order. ``on_commit(requests, results)``, if given, is called right
    after the commit with no await in between, before any requester wakes."""

    def __init__(
        self,
        db: Database,
        run: Callable[[Connection, list[R]], list[T]],
        *,
        batch_max: int,
        on_commit: Callable[[list[R], list[T]], None] | None = None,
        multi_statements: bool = False,
    ) -> None:
        self.db = db
        self.multi_statements = multi_statements  # see Database.tx
        self.run = run
        self.batch_max = batch_max
        self.on_commit = on_commit
        self._pending: list[_Slot[R, T]] = []
        self._flushing = False

    async def submit(self, nursery: trio.Nursery, request: R) -> T:
        slot: _Slot[R, T] = _Slot(request)
        self._pending.append(slot)
        if not self._flushing:
            self._flushing = True
            nursery.start_soon(self._flush)
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with done, error unset

    def _run(self, requests: list[R], conn: Connection) -> list[T]:
        results = self.run(conn, requests)
        # checked before the commit (nothing is stored), except where ``run`` commits in
        # band (the turn starts' writes on MySQL: one result per request by construction)
        if len(results) != len(requests):
            raise ValueError(f"{len(results)} results for a batch of {len(requests)} requests")
        return results

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.batch_max]
                del self._pending[: self.batch_max]
                requests = [s.request for s in batch]
                try:
                    results = await self.db.tx(
                        functools.partial(self._run, requests),
                        multi_statements=self.multi_statements,
                    )
                except Exception as exc:
                    for s in batch:
                        s.error = exc
                        s.done.set()
                    continue
                if self.on_commit is not None:
                    self.on_commit(requests, results)
                for s, res in zip(batch, results, strict=True):
                    s.result = res
                    s.done.set()
        finally:
            self._flushing = False
