"""Starting a turn: the checks before anything is stored, and group commit.

:func:`precheck` refuses what can be refused without the database (the same
content again within the duplicate window; the upstream's breaker open). The
:class:`StartQueue` then stores turn starts that arrive together in one
transaction; :data:`REFUSALS` says what each refused start answers (nothing
was stored for any of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from protocol.errors import ErrorCode, ProtocolError
from server.services import Services
from server.turns.live import Listener, Upstream
from store import messages as store_messages
from store.batch import GroupCommit
from store.cache import CacheError
from store.messages import BeginOutcome, BeginRequest, BeginResult

__all__ = [
    "PendingStart",
    "StartQueue",
    "idem_key",
    "precheck",
    "precheck_keys",
    "quota_key",
    "refusal",
]

QUOTA_TTL = 60  # seconds: what a user keeps is measured at most once a minute


def idem_key(conversation_id: str, client_message_id: str) -> str:
    """The cache key of an idempotency key (``messageId`` → assistant message id)."""
    return f"idem:{conversation_id}:{client_message_id}"


def quota_key(user_id: str) -> str:
    """The cache key of what the user keeps, as last measured (bytes)."""
    return f"quota:{user_id}"


def over_quota(used: int, cap: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"this account keeps {used} bytes of {cap}; delete conversations to go on",
    )


def dup_key(user_id: str, conversation_id: str, content: str) -> str:
    digest = hashlib.sha256(content.encode()).hexdigest()[:32]
    return f"dup:{user_id}:{conversation_id}:{digest}"


@dataclass(frozen=True, slots=True)
class Precheck:
    known: bool  # the cache knows this messageId: it replays or joins
    dup_key: str
    measure_quota: bool = False  # the cache has no figure: the turn start measures it


def precheck_keys(
    user_id: str, conversation_id: str, client_message_id: str, content: str, quota: bool
) -> list[str]:
    """The cache keys :func:`precheck` reads (a caller may read them beforehand, with
    other work, and pass their values as ``prefetched``)."""
    keys = [
        idem_key(conversation_id, client_message_id),
        dup_key(user_id, conversation_id, content),
    ]
    if quota:
        keys.append(quota_key(user_id))
    return keys


async def precheck(
    svc: Services,
    upstream: Upstream,
    *,
    user_id: str,
    conversation_id: str,
    client_message_id: str,
    content: str,
    max_stored_bytes: int | None = None,
    prefetched: Sequence[bytes | None] | None = None,
) -> Precheck:
    """Refuse, before anything is stored, what needs no database. Raises ProtocolError.
    ``max_stored_bytes``: the user's cap on what they keep, checked against the cached
    figure; without one, the turn start measures it (``Precheck.measure_quota``).
    ``prefetched``: the values of :func:`precheck_keys`, already read."""
    keys = precheck_keys(
        user_id, conversation_id, client_message_id, content, max_stored_bytes is not None
    )
    known: bytes | None = None
    measure = False
    try:
        values = prefetched if prefetched is not None else await svc.cache.get_many(keys)
        known, dup, *quota = values
        if known is None and dup is not None:
            raise ProtocolError(
                ErrorCode.DUPLICATE_CONTENT, "the same message was sent moments ago"
            )
        if quota and known is None:
            assert max_stored_bytes is not None
            if quota[0] is None:
                measure = True
            elif int(quota[0]) >= max_stored_bytes:
                raise over_quota(int(quota[0]), max_stored_bytes)
    except CacheError:
        # the database still finds duplicates by messageId, and measures the quota
        measure = max_stored_bytes is not None
    # A known messageId replays or joins: it needs no upstream call.
    wait = 0.0 if known is not None else upstream.unavailable_for()
    if wait > 0:
        # Fail fast, before anything is stored: the upstream is being skipped.
        raise ProtocolError(
            ErrorCode.UPSTREAM_UNAVAILABLE,
            "the model is unavailable; retry shortly",
            retry_after_ms=max(1, int(wait * 1000)),
        )
    return Precheck(known is not None, keys[1], measure)


def refusal(
    outcome: BeginOutcome, max_turns_per_user: int, *, used: int = 0, cap: int = 0
) -> ProtocolError | None:
    """The error a turn start the database refused answers; None when it was not refused."""
    if outcome is BeginOutcome.EXPIRED:
        return ProtocolError(
            ErrorCode.REPLAY_EXPIRED,
            "that message is no longer stored; nothing was generated again",
        )
    if outcome is BeginOutcome.SESSION_REVOKED:
        return ProtocolError(ErrorCode.AUTH_INVALID, "session revoked")
    if outcome is BeginOutcome.NOT_FOUND:
        return ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
    if outcome is BeginOutcome.CONFLICT:
        return ProtocolError(
            ErrorCode.IDEMPOTENCY_CONFLICT, "this messageId was used with other content"
        )
    if outcome is BeginOutcome.BUSY:
        return ProtocolError(
            ErrorCode.CONVERSATION_BUSY,
            "a reply is still streaming in this conversation",
            retry_after_ms=1000,
        )
    if outcome is BeginOutcome.OVER_QUOTA:
        return over_quota(used, cap)
    if outcome is BeginOutcome.TOO_MANY:
        return ProtocolError(
            ErrorCode.CONVERSATION_BUSY,
            f"at most {max_turns_per_user} replies may stream at once per user",
            retry_after_ms=1000,
        )
    return None


@dataclass(eq=False)
class PendingStart:
    request: BeginRequest
    listener: Listener
    received_at: float
    dup_key: str


class StartQueue:
    """Turn starts that arrive together share one transaction (group commit).

    ``on_started`` is called for each start the database took, right after the commit
    and with no await in between, inside the server-wide nursery: a requester that goes
    away meanwhile cannot leave an ownerless ``streaming`` row.
    """

    def __init__(
        self,
        svc: Services,
        *,
        max_user_turns: int,
        batch_max: int,
        on_started: Callable[[PendingStart, BeginResult], None],
    ) -> None:
        self.on_started = on_started
        self._commit: GroupCommit[PendingStart, BeginResult] = GroupCommit(
            svc.db,
            lambda conn, batch: store_messages.begin_turns(
                conn, requests=[p.request for p in batch], max_user_turns=max_user_turns
            ),
            batch_max=batch_max,
            on_commit=self._started,
            multi_statements=True,  # MySQL: a start's reads in one round trip, its writes in one
        )

    def _started(self, batch: list[PendingStart], results: list[BeginResult]) -> None:
        for p, res in zip(batch, results, strict=True):
            if res.outcome is BeginOutcome.STARTED:
                self.on_started(p, res)

    async def submit(self, nursery: trio.Nursery, pending: PendingStart) -> BeginResult:
        return await self._commit.submit(nursery, pending)
