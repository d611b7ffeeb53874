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
- A follower subscribes to the channel first, then reads the list, then goes on live,
  merging by chunk number: nothing missed, nothing repeated at the seam; a gap (a
  dropped pub/sub message) is filled from the list again.
- The sweeper (``sweeper.py``) finishes, on any instance, the turns whose lease is gone.

With the in-process engine (one process) none of this runs: the process owns every
turn and sweeps leftovers at start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from protocol import outgoing
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import MessageStatus
from protocol.outgoing import StreamDelta
from server.logging import get_logger
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.live import Listener, LiveTurn, OutboxLike, stored_chunks, stored_done
from store import messages as store_messages
from store.cache import CacheEngine, CacheError, CachePipeline
from store.records import MessageRecord

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
        self.instance = svc.instance_id
        self._pending: dict[str, _Pending] = {}
        self._follows: dict[int, dict[str, trio.CancelScope]] = {}
        self._wake = trio.Event()

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
            pending, self._pending = self._pending, {}
            pipe = self.svc.cache.pipeline()
            for p in pending.values():
                self._queue_pending(pipe, p)
            if renew:
                for live in self.live.values():
                    pipe.set(lease_key(live.message_id), self.instance, ttl=self.cfg.lease_ttl)
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
            pipe.set(lease_key(live.message_id), self.instance, ttl=self.cfg.lease_ttl)

    async def end(self, live: LiveTurn, payload: dict[str, Any]) -> None:
        """The turn's end is stored: send what is left of its deltas, then its end, to every
        follower; the lease goes, the buffer lingers a while for late resumes."""
        if not self.enabled:
            return
        pipe = self.svc.cache.pipeline()
        pending = self._pending.pop(live.message_id, None)
        if pending is not None:
            self._queue_pending(pipe, pending)
        queue_end(pipe, live.message_id, payload, self.cfg.stream_linger)
        pipe.delete(lease_key(live.message_id))
        with trio.move_on_after(2.0):
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
        while True:
            try:
                async with self.svc.cache.subscribe(CONTROL_CHANNEL) as sub:
                    async for _channel, raw in sub:
                        verb, _, mid = raw.decode(errors="replace").partition(" ")
                        for live in list(self.live.values()):
                            if live.message_id != mid:
                                continue
                            if verb == "cancel":
                                live.cancel()
                            elif verb == "follow":
                                live.followed = True
            except CacheError:
                log.warning("control_feed_lost")
            except Exception:
                log.exception("control_feed_failed")
            await trio.sleep(1.0)

    # -- following a turn that lives elsewhere -----------------------------------------

    async def follow(
        self,
        listener: Listener,
        row: MessageRecord,
        on_snapshot: Callable[[Snapshot], Awaitable[int | None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow ``row`` (an assistant message streaming on another instance) for one
        connection: ``on_snapshot`` gets what the buffer holds (and sends any replay); it
        answers the next chunk to send live, or None to stop. Runs until the turn ends,
        the connection goes, or it follows the same turn again."""
        mid = row.id
        slot = self._follows.setdefault(id(listener.outbox), {})
        old = slot.pop(mid, None)
        if old is not None:
            old.cancel()  # one follower per connection and turn: no doubled frames
        scope = trio.CancelScope()
        slot[mid] = scope
        started = False
        snap, sent = Snapshot(), 0
        try:
            with scope:
                try:
                    async with self.svc.cache.subscribe(channel(mid)) as sub:
                        # Subscribed first, then ask the owner to publish this turn, then
                        # read: what the owner flushed before it heard is in the buffer.
                        await self.svc.cache.publish(CONTROL_CHANNEL, f"follow {mid}")
                        snap = await read_snapshot(self.svc.cache, mid)
                        nxt = await on_snapshot(snap)
                        task_status.started()
                        started = True
                        if nxt is None:
                            return
                        sent = self._emit(listener, row, snap, nxt)
                        while snap.end is None:
                            with trio.move_on_after(self.cfg.lease_ttl * 2) as quiet:
                                _ch, raw = await sub.receive()
                            if quiet.cancelled_caught:
                                if await self._finished_without_end(listener, row, snap, sent):
                                    return
                                continue
                            if not snap.add(raw) or snap.short():
                                # an entry missed (not yet published, or dropped): read again
                                snap = await read_snapshot(self.svc.cache, mid)
                                if snap.short():  # the buffer itself lacks some: the end
                                    held = "".join(snap.deltas[:sent])  # is in the database
                                    await self._finish_from_database(listener, row, sent_text=held)
                                    return
                            sent = self._emit(listener, row, snap, sent)
                except CacheError:
                    # The broker is gone: what follows comes from the database, at the end.
                    log.warning("follow_lost", messageId=mid)
                    if not started:
                        snap = Snapshot()
                        nxt = await on_snapshot(snap)
                        task_status.started()
                        started = True
                        if nxt is None:
                            return
                        sent = nxt
                    held = "".join(snap.deltas[:sent])
                    await self._finish_from_database(listener, row, sent_text=held)
        finally:
            if not started:
                task_status.started()
            if slot.get(mid) is scope:
                del slot[mid]
            if not slot:
                self._follows.pop(id(listener.outbox), None)

    def _emit(self, listener: Listener, row: MessageRecord, snap: Snapshot, nxt: int) -> int:
        """Send the deltas from chunk ``nxt`` on (merged into one frame), and the end."""
        if len(snap.deltas) > nxt:
            text = "".join(snap.deltas[nxt:])
            delta = StreamDelta(row.conversation_id, row.id, row.seq, len(snap.deltas) - 1, text)
            listener.outbox.push_stream(delta, listener.reply)
            nxt = len(snap.deltas)
        if snap.end is not None:
            self._send_end(listener, row, snap.end)
        return nxt

    def _send_end(self, listener: Listener, row: MessageRecord, end: dict[str, Any]) -> None:
        err = end.get("error")
        if err is not None:
            code = ErrorCode(err["code"])
            listener.send(outgoing.error(ProtocolError(code, err["message"]), listener.reply))
        listener.send(
            outgoing.chat_done(
                listener.reply,
                conversation_id=row.conversation_id,
                message_id=row.id,
                seq=row.seq,
                status=end["status"],
                finish_reason=end["finishReason"],
                chunks=end["chunks"],
                output_tokens=end["outputTokens"],
                input_tokens=end["inputTokens"],
            )
        )

    async def _finished_without_end(
        self, listener: Listener, row: MessageRecord, snap: Snapshot, sent: int
    ) -> bool:
        """Nothing came for a while: if the database says the turn is over (its end was
        lost on the way), finish from the database."""
        fresh = await self.svc.db.read(lambda c: store_messages.get_message(c, row.id))
        if fresh is None or fresh.status == MessageStatus.STREAMING:
            return False
        await self._finish_from_database(listener, row, sent_text="".join(snap.deltas[:sent]))
        return True

    async def _finish_from_database(
        self, listener: Listener, row: MessageRecord, *, sent_text: str | None
    ) -> None:
        """The cache failed or lost the end: wait for the stored end and send it."""
        fresh: MessageRecord | None = None
        # A turn lasts at most the upstream's total timeout (180 s) plus its final write;
        # its owner (or, if that died, a sweeper) stores the end within that.
        with trio.move_on_after(240):
            while True:
                fresh = await self.svc.db.read(lambda c: store_messages.get_message(c, row.id))
                if fresh is None or fresh.status != MessageStatus.STREAMING:
                    break
                await trio.sleep(1.0)
        if fresh is None or fresh.status == MessageStatus.STREAMING:
            return  # no end to report: the client resumes later
        if sent_text is not None and fresh.content.startswith(sent_text):
            rest = fresh.content[len(sent_text) :]
            if rest:
                last = stored_chunks(fresh) - 1
                delta = StreamDelta(row.conversation_id, row.id, row.seq, last, rest)
                listener.outbox.push_stream(delta, listener.reply)
            listener.send(stored_done(listener.reply, fresh))
        else:
            listener.send(outgoing.chat_message(listener.reply, fresh))

    def stop_following(self, outbox: OutboxLike) -> None:
        """A connection closed: its followers end."""
        for scope in self._follows.pop(id(outbox), {}).values():
            scope.cancel()
