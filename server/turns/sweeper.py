"""The sweeper: every instance, every ``sweep_seconds``, finishes the turns whose owner died.

A ``streaming`` row whose lease is gone on two sweeps in a row (so a Redis that restarted
empty does not cut turns whose owners renew their leases meanwhile) is stored
``interrupted`` with the longer of its checkpointed text and its stream buffer; its end
is published to whoever follows it. The database's ``status = streaming`` guard makes
this safe on every instance at once: one of them finishes it, the others change nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import orjson
import trio

from protocol.frames import FinishReason, MessageStatus
from server.logging import get_logger
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.live import LiveTurn
from server.turns.relay import end_payload, lease_key, queue_end, read_snapshot, stream_key
from store import messages as store_messages
from store.cache import CacheError
from store.db import utcnow
from store.records import MessageRecord

__all__ = ["Sweeper"]

log = get_logger("parley.sweeper")


class Sweeper:
    def __init__(self, svc: Services, cfg: TurnConfig, live: dict[str, LiveTurn]) -> None:
        self.svc = svc
        self.cfg = cfg
        self.live = live
        self._suspects: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except CacheError:
                log.warning("sweep_skipped_cache_down")
            except Exception:
                log.exception("sweep_failed")
            await trio.sleep(self.cfg.sweep_seconds)

    async def sweep(self) -> int:
        """One sweep; how many orphaned turns it finished."""
        rows = await self.svc.db.read(store_messages.streaming_turns)
        mine = {live.message_id for live in self.live.values()}
        rows = [r for r in rows if r.id not in mine]
        if not rows:
            self._suspects = set()
            return 0
        leases = await self.svc.cache.get_many([lease_key(r.id) for r in rows])
        # No lease, and no checkpoint for a lease's time either: an owner that is alive
        # but slow to renew (a loaded cache) still checkpoints its growing text.
        quiet_since = utcnow() - dt.timedelta(seconds=self.cfg.lease_ttl)
        orphans = {
            r.id
            for r, lease in zip(rows, leases, strict=True)
            if lease is None and r.updated_at <= quiet_since
        }
        confirmed = orphans & self._suspects
        self._suspects = orphans - confirmed
        for mid in self._suspects:
            log.info("orphan_turn_suspected", messageId=mid)
        done = 0
        for row in rows:
            if row.id in confirmed and await self._finish_orphan(row):
                done += 1
        return done

    async def _finish_orphan(self, row: MessageRecord) -> bool:
        snap = await read_snapshot(self.svc.cache, row.id)
        text, chunks = row.content, row.chunk_count
        if len(snap.deltas) > chunks:  # the buffer got further than the last checkpoint
            text, chunks = snap.text, len(snap.deltas)
        status = MessageStatus.INTERRUPTED.value
        reason = FinishReason.INTERRUPTED.value
        stored = await self.svc.db.tx(
            lambda c: store_messages.finish_message(
                c,
                row.id,
                content=text,
                status=status,
                finish_reason=reason,
                chunk_count=chunks,
                completion_tokens=chunks,
            )
        )
        if not stored:
            return False  # finished meanwhile (its owner was alive after all)
        log.warning("orphan_turn_interrupted", messageId=row.id, convId=row.conversation_id)
        self.svc.metrics.turns.labels(status).inc()
        payload = end_payload(
            status=status,
            finish_reason=reason,
            chunks=chunks,
            output_tokens=chunks,
            input_tokens=None,
            error=None,
        )
        pipe = self.svc.cache.pipeline()
        if len(snap.deltas) < chunks:  # the buffer lacks what the checkpoint has
            pipe.delete(stream_key(row.id))
            entry = orjson.dumps({"k": 0, "d": [text]}) if text else None
            if entry is not None:
                pipe.rpush(stream_key(row.id), [entry], ttl=self.cfg.stream_linger)
        queue_end(pipe, row.id, payload, self.cfg.stream_linger)
        with contextlib.suppress(CacheError):
            await pipe.execute()
        return True
