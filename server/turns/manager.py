"""TurnManager: the front of the turns package, what connections and routes call.

``send`` checks, stores the user message and an empty assistant message, acks,
and starts the generation in the server-wide nursery (:meth:`run`), so a closed
tab does not stop it; ``cancel`` does. The work itself lives beside this
module: starts (:mod:`.starts`), the generation (:mod:`.generation`), duplicates
and resume (:mod:`.replay`), the live turn and its listeners (:mod:`.live`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import trio

from protocol.frames import ChatResume, ChatSend
from protocol.turn import Turn
from server.auth.identity import note_live_session
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.follow import Followers
from server.turns.generation import Generation
from server.turns.live import Listener, LiveTurn, OutboxLike, Upstream
from server.turns.relay import Relay
from server.turns.replay import Replay
from server.turns.starts import (
    QUOTA_TTL,
    PendingStart,
    StartQueue,
    precheck,
    quota_key,
    refusal,
)
from server.turns.sweeper import Sweeper
from store import messages as store_messages
from store.cache import CacheError
from store.messages import BeginOutcome, BeginRequest, BeginResult

__all__ = ["TurnManager"]


class TurnManager:
    """Every live turn of this instance, and the rules of starting and ending one."""

    def __init__(
        self,
        svc: Services,
        upstream: Upstream,
        cfg: TurnConfig | None = None,
        *,
        cluster: bool | None = None,
    ) -> None:
        """``cluster``: other instances may own turns (Redis); default: from the settings."""
        self.svc = svc
        self.upstream = upstream
        self.cfg = cfg or TurnConfig.from_settings(svc.settings)
        self.live: dict[str, LiveTurn] = {}
        enabled = not svc.settings.single_instance if cluster is None else cluster
        self.relay = Relay(svc, self.cfg, self.live, enabled=enabled)
        self.sweeper = Sweeper(svc, self.cfg, self.live)
        self.generation = Generation(svc, upstream, self.cfg, self.live, self.relay)
        self.followers = Followers(svc, self.cfg)
        self.replay = Replay(
            svc, self.cfg, self.live, self.relay, self.followers, lambda: self.nursery
        )
        self._starts = StartQueue(
            svc,
            max_user_turns=self.cfg.max_turns_per_user,
            batch_max=self.cfg.begin_batch_max,
            on_started=self._start,
        )
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The server-wide nursery that owns every generation."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.generation.checkpoint_loop)
            if self.relay.enabled:
                nursery.start_soon(self.relay.run)
                nursery.start_soon(self.sweeper.run)
            task_status.started()
            await trio.sleep_forever()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "TurnManager.run() is not running"
        return self._nursery

    # -- chat.send -----------------------------------------------------------------

    async def send(
        self,
        *,
        user_id: str,
        data: ChatSend,
        listener: Listener,
        max_turns: int | None = None,
        max_stored_bytes: int | None = None,
        prefetched: Sequence[bytes | None] | None = None,
        check_session: str | None = None,
    ) -> None:
        """Start (or join, for a known messageId) a turn. Raises ProtocolError before any ack.
        ``max_turns``: this caller's cap on turns at once, if lower than the server's;
        ``max_stored_bytes``: their cap on what they keep (``PAYLOAD_TOO_LARGE`` at it);
        ``prefetched``: the values of ``precheck_keys`` when the caller has read them;
        ``check_session``: a session only the database can vouch for, asked in the start's
        own transaction (``AUTH_INVALID`` when it is not live; remembered live otherwise)."""
        received_at = time.perf_counter()
        conv_id, client_id, content = str(data.conversationId), str(data.messageId), data.content
        check = await precheck(
            self.svc,
            self.upstream,
            user_id=user_id,
            conversation_id=conv_id,
            client_message_id=client_id,
            content=content,
            max_stored_bytes=max_stored_bytes,
            prefetched=prefetched,
        )
        request = BeginRequest(
            user_id,
            conv_id,
            client_id,
            content,
            must_exist=check.known,
            max_turns=max_turns,
            max_stored_bytes=max_stored_bytes if check.measure_quota else None,
            check_session=check_session,
        )
        result = await self._starts.submit(
            self.nursery, PendingStart(request, listener, received_at, check.dup_key)
        )
        if check_session is not None and result.outcome is not BeginOutcome.SESSION_REVOKED:
            note_live_session(self.svc, check_session)
        if result.stored_bytes is not None:  # measured: remembered for a minute, aside
            self.nursery.start_soon(self._remember_quota, user_id, result.stored_bytes)
        err = refusal(
            result.outcome,
            max_turns or self.cfg.max_turns_per_user,
            used=result.stored_bytes or 0,
            cap=max_stored_bytes or 0,
        )
        if err is not None:
            raise err
        assert result.user_message is not None
        if result.outcome is BeginOutcome.DUPLICATE:
            await self.replay.duplicate(
                conv_id, result.user_message, result.assistant_message, listener
            )
        # STARTED: the start queue has acknowledged it and started its task already.

    async def _remember_quota(self, user_id: str, used: int) -> None:
        with contextlib.suppress(CacheError):
            await self.svc.cache.set(quota_key(user_id), str(used), ttl=QUOTA_TTL)

    def _start(self, p: PendingStart, res: BeginResult) -> None:
        """Right after the commit, with no await: register, ack, generate."""
        assert res.user_message is not None and res.assistant_message is not None
        req = p.request
        live = LiveTurn(
            conversation_id=req.conversation_id,
            user_id=req.user_id,
            client_message_id=req.client_message_id,
            user_message=res.user_message,
            assistant=res.assistant_message,
            history=res.history,
            received_at=p.received_at,
            turn=Turn(
                max_output_tokens=self.cfg.max_output_tokens,
                max_output_bytes=self.cfg.max_output_bytes,
            ),
            listeners=[p.listener],
            dup_key=p.dup_key,
        )
        self.live[req.conversation_id] = live
        live.ack(p.listener, duplicate=False)
        self.nursery.start_soon(self.generation.run, live, self.nursery)

    # -- chat.resume, chat.cancel, connections --------------------------------------

    async def resume(self, *, user_id: str, data: ChatResume, listener: Listener) -> None:
        await self.replay.resume(user_id=user_id, data=data, listener=listener)

    async def cancel(self, *, user_id: str, conversation_id: str, message_id: str) -> bool:
        """chat.cancel: False when no such reply of the caller is in flight anywhere."""
        live = self.live.get(conversation_id)
        if live is not None and live.user_id == user_id and live.message_id == message_id:
            live.cancel()
            return True
        if not self.relay.enabled:
            return False
        row = await self.svc.db.read(
            lambda c: store_messages.streaming_message(
                c, user_id=user_id, conversation_id=conversation_id, message_id=message_id
            )
        )
        if row is None:
            return False
        await self.relay.request_cancel(message_id)  # its owner cancels it
        return True

    async def cancel_conversation(self, conversation_id: str) -> None:
        """The conversation was deleted: stop its turn, wherever it runs (it ends cancelled)."""
        live = self.live.get(conversation_id)
        if live is not None:
            live.cancel()
            return
        if self.relay.enabled:
            ids = await self.svc.db.read(
                lambda c: store_messages.streaming_in_conversation(c, conversation_id)
            )
            for mid in ids:
                await self.relay.request_cancel(mid)

    def interrupt_all(self) -> int:
        """Drain: cut every turn still running; each ends ``interrupted``, text stored."""
        for live in self.live.values():
            live.cancel_scope.cancel()
        return len(self.live)

    def detach(self, outbox: OutboxLike) -> None:
        """A connection closed: stop sending it frames (the turns go on)."""
        for live in self.live.values():
            live.detach(outbox)
        self.followers.stop_following(outbox)
