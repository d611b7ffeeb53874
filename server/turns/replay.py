"""Answers again: a duplicate ``chat.send`` (join the live turn or replay the stored one)
and ``chat.resume`` (replay what the client misses, then go on live).

What to replay is decided by :func:`protocol.resume.plan_resume`; this module only
reads what the plan needs and sends it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from protocol import outgoing
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ChatResume, MessageStatus
from protocol.outgoing import StreamDelta
from protocol.resume import InFlight, Reset, StoredRef, plan_resume
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.follow import Followers
from server.turns.live import Listener, LiveTurn, stored_chunks, stored_done
from server.turns.relay import Relay, Snapshot
from store import messages as store_messages
from store.records import MessageRecord

__all__ = ["Replay"]


class Replay:
    def __init__(
        self,
        svc: Services,
        cfg: TurnConfig,
        live: dict[str, LiveTurn],
        relay: Relay,
        followers: Followers,
        nursery: Callable[[], trio.Nursery],
    ) -> None:
        self.svc = svc
        self.cfg = cfg
        self.live = live
        self.relay = relay
        self.followers = followers
        self._nursery = nursery

    def _live(self, conversation_id: str) -> LiveTurn | None:
        live = self.live.get(conversation_id)
        return live if live is not None and live.is_live else None

    # -- duplicate chat.send -------------------------------------------------------

    async def duplicate(
        self,
        conversation_id: str,
        user_msg: MessageRecord,
        assistant: MessageRecord | None,
        listener: Listener,
    ) -> None:
        """Ack with duplicate: true, then join the live answer or replay the stored one."""
        live = self._live(conversation_id)
        if live is not None and live.user_message.id == user_msg.id:
            live.ack(listener, duplicate=True)
            text = live.turn.text
            if text:
                listener.outbox.push_stream(live.delta(live.turn.chunks - 1, text), listener.reply)
            live.attach(listener)
            return
        if assistant is None or assistant.deleted_at is not None:
            raise ProtocolError(ErrorCode.REPLAY_EXPIRED, "that message is no longer stored")
        if assistant.status == MessageStatus.STREAMING:
            # Finished between our read and now? Read the row again before saying busy.
            await trio.sleep(0.05)
            aid = assistant.id
            fresh = await self.svc.db.read(lambda c: store_messages.get_message(c, aid))
            if fresh is not None and fresh.status != MessageStatus.STREAMING:
                assistant = fresh
        if assistant.status == MessageStatus.STREAMING and not self.relay.enabled:
            # One process owns every turn: a streaming row that is not live is a leftover.
            raise ProtocolError(
                ErrorCode.CONVERSATION_BUSY,
                "this reply is streaming on another connection; resume the conversation",
                retry_after_ms=1000,
            )
        listener.send(
            outgoing.chat_ack(
                listener.reply,
                conversation_id=conversation_id,
                message_id=str(user_msg.client_message_id),
                user_seq=user_msg.seq,
                assistant_message_id=assistant.id,
                assistant_seq=assistant.seq,
                duplicate=True,
            )
        )
        if assistant.status == MessageStatus.STREAMING:
            # Live on another instance: join it there, from its first chunk.
            await self._nursery().start(self.followers.follow, listener, assistant, _from_start)
            return
        self.replay_stored(assistant, listener)

    def replay_stored(self, m: MessageRecord, listener: Listener) -> None:
        """A finished answer, again: its whole text as one merged delta, then chat.done."""
        if m.content:
            last = stored_chunks(m) - 1
            delta = StreamDelta(m.conversation_id, m.id, m.seq, last, m.content)
            listener.outbox.push_stream(delta, listener.reply)
        listener.send(stored_done(listener.reply, m))

    # -- chat.resume ---------------------------------------------------------------

    async def resume(self, *, user_id: str, data: ChatResume, listener: Listener) -> None:
        """Replay what the client misses, say ``chat.resumed``, then go on live."""
        conv_id = str(data.conversationId)
        after = data.lastMessageSeq
        cfg = self.cfg
        for attempt in range(2):
            view = await self.svc.db.read(
                lambda c: store_messages.resume_view(
                    c,
                    user_id=user_id,
                    conversation_id=conv_id,
                    after_seq=after,
                    limit=cfg.replay_max_messages + 1,
                )
            )
            if view is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such conversation")
            last_seq, rows = view
            live = self._live(conv_id)
            orphan = any(status == MessageStatus.STREAMING for _, _, status in rows)
            if live is None and orphan and attempt == 0:
                await trio.sleep(0.05)  # a turn finishing right now: read again
                continue
            break
        if live is None and orphan and self.relay.enabled:
            await self._resume_remote(data, listener, last_seq, rows)
            return
        plan = plan_resume(
            last_message_seq=after,
            last_chunk=data.lastChunk,
            server_last_seq=last_seq,
            stored=[StoredRef(seq, size) for seq, size, _ in rows],
            in_flight=InFlight(live.seq, live.turn.entries()) if live is not None else None,
            max_messages=cfg.replay_max_messages,
            max_bytes=cfg.replay_max_bytes,
        )
        if isinstance(plan, Reset):
            # Live frames follow (contract); after reloading over REST the client resumes
            # again from there, which fills any gap (one listener per connection: no doubles).
            self._resumed(conv_id, listener, replayed=0, live=plan.live, reset=True)
            if live is not None and plan.live:
                live.attach(listener)
            return
        records = await self.svc.db.read(
            lambda c: store_messages.messages_by_seq(c, conv_id, list(plan.messages))
        )
        # From here on nothing awaits: replay, chat.resumed and joining are one step.
        live = self._live(conv_id)
        if live is not None and live.seq != plan.in_flight_seq:
            live = None
        if live is None and plan.in_flight_seq is not None:
            # It finished while we read: its row is stored (chat.done follows the write),
            # so it goes out whole, as a chat.message.
            seq = plan.in_flight_seq
            records += await self.svc.db.read(
                lambda c: store_messages.messages_by_seq(c, conv_id, [seq])
            )
            live = self._live(conv_id)
            if live is not None and live.seq != seq:
                live = None
        for m in records:
            listener.send(outgoing.chat_message(listener.reply, m))
        replayed = len(records)
        if live is not None:
            # The plan's part of the in-flight message, and whatever came during the reads.
            missing = live.turn.text_since(plan.stream_from_chunk)
            if missing:
                listener.outbox.push_stream(
                    live.delta(live.turn.chunks - 1, missing), listener.reply
                )
                replayed += 1
        self._resumed(conv_id, listener, replayed=replayed, live=live is not None, reset=False)
        if live is not None:
            live.attach(listener)

    async def _resume_remote(
        self,
        data: ChatResume,
        listener: Listener,
        last_seq: int,
        rows: list[tuple[int, int, str]],
    ) -> None:
        """The turn in flight lives on another instance: replay from its stream buffer,
        then follow it live through the broker."""
        conv_id, after, cfg = str(data.conversationId), data.lastMessageSeq, self.cfg
        seq = next(s for s, _, status in rows if status == MessageStatus.STREAMING)
        [row] = await self.svc.db.read(lambda c: store_messages.messages_by_seq(c, conv_id, [seq]))

        async def on_snapshot(snap: Snapshot) -> int | None:
            if snap.end is not None:  # it ended meanwhile: its row is final
                seqs = [s for s, _, _ in rows if s > after]
                records = await self.svc.db.read(
                    lambda c: store_messages.messages_by_seq(c, conv_id, seqs)
                )
                for m in records:
                    listener.send(outgoing.chat_message(listener.reply, m))
                self._resumed(conv_id, listener, replayed=len(records), live=False, reset=False)
                return None
            plan = plan_resume(
                last_message_seq=after,
                last_chunk=data.lastChunk,
                server_last_seq=last_seq,
                stored=[StoredRef(s, size) for s, size, _ in rows],
                in_flight=InFlight(seq, tuple(enumerate(snap.deltas))),
                max_messages=cfg.replay_max_messages,
                max_bytes=cfg.replay_max_bytes,
            )
            if isinstance(plan, Reset):
                self._resumed(conv_id, listener, replayed=0, live=True, reset=True)
                return len(snap.deltas)
            records = await self.svc.db.read(
                lambda c: store_messages.messages_by_seq(c, conv_id, list(plan.messages))
            )
            for m in records:
                listener.send(outgoing.chat_message(listener.reply, m))
            replayed = len(records)
            missing = "".join(snap.deltas[plan.stream_from_chunk :])
            if missing:
                delta = StreamDelta(conv_id, row.id, seq, len(snap.deltas) - 1, missing)
                listener.outbox.push_stream(delta, listener.reply)
                replayed += 1
            self._resumed(conv_id, listener, replayed=replayed, live=True, reset=False)
            return len(snap.deltas)

        await self._nursery().start(self.followers.follow, listener, row, on_snapshot)

    def _resumed(
        self, conv_id: str, listener: Listener, *, replayed: int, live: bool, reset: bool
    ) -> None:
        listener.send(
            outgoing.chat_resumed(
                listener.reply, conversation_id=conv_id, replayed=replayed, live=live, reset=reset
            )
        )


async def _from_start(_snap: Snapshot) -> int:
    """A duplicate send joining a turn on another instance: all of it, from chunk 0."""
    return 0
