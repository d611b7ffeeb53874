"""Following, on this instance, a turn that lives on another one (``relay.py`` is the owner's
side of the same stream buffer).

A follower subscribes to the turn's channel, asks the owner to publish the turn, then
reads the buffer; it relays live entries merging by chunk number, and reads the buffer
again on a gap. If the broker fails, or the end never comes through, the end is taken
from the database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from protocol import outgoing
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import MessageStatus
from protocol.outgoing import StreamDelta
from server.logging import get_logger
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.live import Listener, OutboxLike, stored_chunks, stored_done
from server.turns.relay import CONTROL_CHANNEL, Snapshot, channel, read_snapshot
from store import messages as store_messages
from store.cache import CacheError
from store.records import MessageRecord

__all__ = ["Followers"]

log = get_logger("parley.relay")


class Followers:
    """This instance's followers of turns that live elsewhere, by connection."""

    def __init__(self, svc: Services, cfg: TurnConfig) -> None:
        self.svc = svc
        self.cfg = cfg
        self._follows: dict[int, dict[str, trio.CancelScope]] = {}

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
