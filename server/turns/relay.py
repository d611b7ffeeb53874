"""Turns across instances: a lease per live turn, a stream buffer per live turn, following
a turn that lives on another instance, cancel routed to the owner, and the sweeper that
finishes the turns of a dead instance.

MariaDB is the truth; the cache/broker carries only what is in flight:

- ``lease:turn:{id}`` = the owner's instance id, set when the turn starts and renewed by
  the owner every ``lease_renew`` seconds (TTL ``lease_ttl``). The database's ``status =
  streaming`` guard on every write is the fence: once a sweeper stored a turn
  ``interrupted``, a late write from its old owner changes nothing.
- ``tstream:{id}``: a list of entries, ``{"k": first chunk, "d": [delta, ...]}`` and a
  last ``{"end": {...}}``. An entry is also published on ``parley:turn:{id}`` when
  someone on another instance follows the turn (it asks on ``CONTROL_CHANNEL``), the end
  always. The owner batches: one pipeline per flush for all its turns, not a round trip
  per token.
- A follower (``follow.py``) subscribes to the channel first, then reads the list, then
  goes on live, merging by chunk number: nothing missed, nothing repeated at the seam; a
  gap (a dropped pub/sub message) is filled from the list again.
- The sweeper (``sweeper.py``) finishes, on any instance, the turns whose lease is gone.

With the in-process engine (one process) none of this runs: the process owns every
turn and sweeps leftovers at start-up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from protocol.errors import ProtocolError
from server.listen import listen_forever
from server.logging import get_logger
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.live import LiveTurn
from store.cache import CacheEngine, CacheError, CachePipeline

__all__ = [
    "CONTROL_CHANNEL",
    "Relay",
    "Snapshot",
    "channel",
    "end_payload",
    "lease_key",
    "queue_end",
    "read_snapshot",
    "stream_key",
]

log = get_logger("parley.relay")

CONTROL_CHANNEL = "parley:turn-control"  # "cancel <id>", "follow <id>": to the owner
STREAM_MAX_ENTRIES = 20_000


def lease_key(message_id: str) -> str:
    return f"lease:turn:{message_id}"


def stream_key(message_id: str) -> str:
    return f"tstream:{message_id}"


def channel(message_id: str) -> str:
    return f"parley:turn:{message_id}"


def end_payload(
    *,
    status: str,
    finish_reason: str | None,
    chunks: int,
    output_tokens: int,
    input_tokens: int | None,
    error: ProtocolError | None,
) -> dict[str, Any]:
    return {
        "status": status,
        "finishReason": finish_reason,
        "chunks": chunks,
        "outputTokens": output_tokens,
        "inputTokens": input_tokens,
        "error": None if error is None else {"code": error.code.value, "message": error.message},
    }


@dataclass
class Snapshot:
    """What the stream buffer holds of a turn: its deltas by chunk number, and its end."""

    deltas: list[str] = field(default_factory=list)
    end: dict[str, Any] | None = None

    def add(self, raw: bytes) -> bool:
        """Take one entry; False when it leaves a gap (an entry was missed)."""
        entry = orjson.loads(raw)
        if "end" in entry:
            self.end = entry["end"]
            return True
        first, texts = int(entry["k"]), entry["d"]
        if first > len(self.deltas):
            return False
        self.deltas.extend(texts[len(self.deltas) - first :])
        return True

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    def short(self) -> bool:
        """The end says more chunks were sent than this snapshot holds."""
        return self.end is not None and len(self.deltas) < int(self.end["chunks"])


async def read_snapshot(cache: CacheEngine, message_id: str) -> Snapshot:
    """Everything the stream buffer holds of a turn."""
    snap = Snapshot()
    for raw in await cache.lrange(stream_key(message_id), 0, -1):
        snap.add(raw)
    return snap


def queue_end(pipe: CachePipeline, message_id: str, payload: dict[str, Any], linger: float) -> None:
    """Queue a turn's end on ``pipe``: appended to its buffer and published to followers."""
    entry = orjson.dumps({"end": payload})
    pipe.rpush(stream_key(message_id), [entry], ttl=linger)
    pipe.publish(channel(message_id), entry)


@dataclass(eq=False)
class _Pending:
    live: LiveTurn
    first: int
    texts: list[str] = field(default_factory=list)


class Relay:
    """This instance's side of the cluster (see the module docstring)."""

    def __init__(
        self, svc: Services, cfg: TurnConfig, live: dict[str, LiveTurn], *, enabled: bool
    ) -> None:
        self.svc = svc
        self.cfg = cfg
        self.live = live
        self.enabled = enabled
        self._pending: dict[str, _Pending] = {}
        self._wake = trio.Event()
        # One send at a time: a turn's end goes out after any flush of its deltas in flight
        # (and after their retry, if that flush failed), never before them.
        self._sending = trio.Lock()

    # -- the owner's side ------------------------------------------------------------

    def on_delta(self, live: LiveTurn, chunk: int, text: str) -> None:
        """Queue a delta for the next flush (no I/O here: this is the per-token path)."""
        if not self.enabled:
            return
        pending = self._pending.get(live.message_id)
        if pending is None:
            pending = self._pending[live.message_id] = _Pending(live, chunk)
            self._wake.set()
        pending.texts.append(text)

    def _queue_pending(self, pipe: CachePipeline, pending: _Pending) -> None:
        entry = orjson.dumps({"k": pending.first, "d": pending.texts})
        live = pending.live
        mid = live.message_id
        pipe.rpush(stream_key(mid), [entry], ttl=self.cfg.stream_linger, max_len=STREAM_MAX_ENTRIES)
        if live.followed:  # nobody elsewhere follows most turns: no publish for them
            pipe.publish(channel(mid), entry)

    async def run(self) -> None:
        """Flush the stream buffers, renew the leases, listen for cancels."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._watch_control)

    async def _flush_loop(self) -> None:
        """Flush as soon as a delta waits, but at most once per ``relay_flush_seconds``
        (more apart with many turns live: 0.5 ms per turn, up to 100 ms). A few streams stay
        close behind their clients (a survivor can replay nearly all a client held); many
        streams share each pipeline, with one entry per turn holding several deltas."""
        next_renew = trio.current_time()
        while True:
            await trio.sleep(min(0.1, max(self.cfg.relay_flush_seconds, len(self.live) * 5e-4)))
            with trio.move_on_at(next_renew):
                await self._wake.wait()
            self._wake = trio.Event()
            renew = trio.current_time() >= next_renew
            if renew:
                next_renew = trio.current_time() + self.cfg.lease_renew
            if not self._pending and not (renew and self.live):
                continue
            async with self._sending:
                await self._flush(renew)

    async def _flush(self, renew: bool) -> None:
        pending, self._pending = self._pending, {}
        pipe = self.svc.cache.pipeline()
        for p in pending.values():
            self._queue_pending(pipe, p)
        if renew:
            for live in self.live.values():
                pipe.set(lease_key(live.message_id), self.svc.instance_id, ttl=self.cfg.lease_ttl)
        try:
            await pipe.execute()
        except CacheError:
            # Kept for the next flush, ahead of what came meanwhile: the buffer stays
            # whole once the cache answers again (a turn's deltas are bounded).
            log.warning("relay_flush_failed", turns=len(pending))
            for mid, p in pending.items():
                later = self._pending.get(mid)
                if later is not None:
                    p.texts.extend(later.texts)
                self._pending[mid] = p

    def lease(self, pipe: CachePipeline, live: LiveTurn) -> None:
        """Queue the turn's lease on a pipeline the caller sends (the turn's start)."""
        if self.enabled:
            pipe.set(lease_key(live.message_id), self.svc.instance_id, ttl=self.cfg.lease_ttl)

    async def end(self, live: LiveTurn, payload: dict[str, Any]) -> None:
        """The turn's end is stored: send what is left of its deltas, then its end, to every
        follower; the lease goes, the buffer lingers a while for late resumes."""
        if not self.enabled:
            return
        with trio.move_on_after(2.0):
            async with self._sending:
                pipe = self.svc.cache.pipeline()
                pending = self._pending.pop(live.message_id, None)
                if pending is not None:
                    self._queue_pending(pipe, pending)
                queue_end(pipe, live.message_id, payload, self.cfg.stream_linger)
                pipe.delete(lease_key(live.message_id))
                try:
                    await pipe.execute()
                except CacheError:
                    log.warning("relay_end_failed", messageId=live.message_id)

    # -- cancel on any instance ------------------------------------------------------

    async def request_cancel(self, message_id: str) -> None:
        """Ask the owner (wherever it is) to cancel this turn."""
        if self.enabled:
            with contextlib.suppress(CacheError):
                await self.svc.cache.publish(CONTROL_CHANNEL, f"cancel {message_id}")

    async def _watch_control(self) -> None:
        """Requests for this instance's turns from the others: cancel one; publish one's
        deltas as they are flushed (someone elsewhere follows it)."""
        await listen_forever(self.svc.cache, CONTROL_CHANNEL, self._control, name="control")

    def _control(self, message: str) -> None:
        verb, _, mid = message.partition(" ")
        for live in list(self.live.values()):
            if live.message_id != mid:
                continue
            if verb == "cancel":
                live.cancel()
            elif verb == "follow":
                live.followed = True
