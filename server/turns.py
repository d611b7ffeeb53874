"""Turns: one generation per conversation, owned by the server, not by a connection.

``TurnManager.send`` stores the user message and an empty assistant message,
acknowledges, and starts the generation in the server-wide nursery, so a
closed tab does not stop it; ``cancel`` does. Frames reach connections only
through their :class:`~server.ws.outbox.Outbox` (the connection's writer is the
only task that writes to a socket). The text is checkpointed to the database
at least every 500 ms while it grows, and ``chat.done`` is pushed only after
the final text and status are stored.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from protocol.codec import encode_server_frame
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ChatResume, ChatSend, ServerType
from protocol.resume import REPLAY_MAX_MESSAGES, InFlight, Reset, StoredRef, plan_resume
from protocol.turn import Turn, TurnState
from server.api.common import note_activity
from server.api.schemas import message_json
from server.llm.base import (
    ChatMessage,
    StreamEnd,
    TokenDelta,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.llm.resilience import BreakerState
from server.logging import get_logger
from server.services import Services
from store import messages as store_messages
from store.cache import CacheError
from store.records import MessageRecord

__all__ = ["Listener", "LiveTurn", "TurnManager", "UpstreamStream"]

log = get_logger("parley.turns")

MAX_OUTPUT_TOKENS = 4096
MAX_OUTPUT_BYTES = 64 * 1024
CHECKPOINT_SECONDS = 0.5
IDEMPOTENCY_TTL = 24 * 3600
DUPLICATE_WINDOW = 10.0
FINISH_DEADLINE = 45.0  # longest a turn's final write may hold up its chat.done (or shutdown)
MAX_TURNS_PER_USER = 3
BEGIN_BATCH_MAX = 64  # turn starts per transaction when they arrive together


class OutboxLike(Protocol):
    def push_frame(self, text: str, type: str) -> None: ...

    def push_stream(
        self,
        *,
        conversation_id: str,
        message_id: str,
        seq: int,
        chunk: int,
        delta: str,
        request_id: str | None,
        trace_id: str,
        t0: float | None = None,
        gap: float = 1.0,
    ) -> None: ...


class UpstreamStream(Protocol):
    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Any: ...


@dataclass(eq=False)
class Listener:
    """A connection that receives a turn's frames, with the ids of its request."""

    outbox: OutboxLike
    request_id: str | None
    trace_id: str


@dataclass(eq=False)
class LiveTurn:
    conversation_id: str
    user_id: str
    client_message_id: str
    user_message: MessageRecord
    assistant: MessageRecord
    history: list[tuple[str, str]]
    received_at: float
    turn: Turn = field(
        default_factory=lambda: Turn(
            max_output_tokens=MAX_OUTPUT_TOKENS, max_output_bytes=MAX_OUTPUT_BYTES
        )
    )
    deltas: list[str] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    cancel_requested: bool = False
    usage_in: int | None = None
    error: ProtocolError | None = None
    saved_chunks: int = 0
    dup_key: str = ""
    last_delta_at: float = 0.0
    gap: float = 1.0  # smoothed seconds between deltas (the writers' coalescing reads it)

    def attach(self, listener: Listener) -> None:
        """Send this turn's frames to a connection; one listener per connection (the newest
        request's ids win), so resuming twice never doubles a frame."""
        self.listeners = [lst for lst in self.listeners if lst.outbox is not listener.outbox]
        self.listeners.append(listener)

    @property
    def message_id(self) -> str:
        return self.assistant.id

    @property
    def seq(self) -> int:
        return self.assistant.seq


# Turn starts the database refused: the error each one answers (nothing was stored).
_REFUSALS: dict[store_messages.BeginOutcome, tuple[ErrorCode, str, int | None]] = {
    store_messages.BeginOutcome.EXPIRED: (
        ErrorCode.REPLAY_EXPIRED,
        "that message is no longer stored; nothing was generated again",
        None,
    ),
    store_messages.BeginOutcome.NOT_FOUND: (ErrorCode.NOT_FOUND, "no such conversation", None),
    store_messages.BeginOutcome.CONFLICT: (
        ErrorCode.IDEMPOTENCY_CONFLICT,
        "this messageId was used with other content",
        None,
    ),
    store_messages.BeginOutcome.BUSY: (
        ErrorCode.CONVERSATION_BUSY,
        "a reply is still streaming in this conversation",
        1000,
    ),
    store_messages.BeginOutcome.TOO_MANY: (
        ErrorCode.CONVERSATION_BUSY,
        f"at most {MAX_TURNS_PER_USER} replies may stream at once per user",
        1000,
    ),
}


def _upstream_code(exc: UpstreamError) -> ErrorCode:
    if isinstance(exc, UpstreamUnavailable):
        return ErrorCode.UPSTREAM_UNAVAILABLE
    if isinstance(exc, UpstreamTimeout):
        return ErrorCode.UPSTREAM_TIMEOUT
    return ErrorCode.UPSTREAM_ERROR


def _done_data(
    conversation_id: str,
    message_id: str,
    seq: int,
    status: str,
    finish_reason: str | None,
    chunks: int,
    output_tokens: int,
    input_tokens: int | None,
) -> dict[str, Any]:
    return {
        "conversationId": conversation_id,
        "messageId": message_id,
        "seq": seq,
        "status": status,
        "finishReason": finish_reason,
        "lastChunk": chunks - 1,
        "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens},
    }


@dataclass(eq=False)
class _PendingBegin:
    request: store_messages.BeginRequest
    listener: Listener
    received_at: float
    dup_key: str
    done: trio.Event = field(default_factory=trio.Event)
    result: store_messages.BeginResult | None = None
    error: Exception | None = None


class TurnManager:
    """Every live turn of this instance, and the rules of starting and ending one."""

    def __init__(self, svc: Services, upstream: UpstreamStream) -> None:
        self.svc = svc
        self.upstream = upstream
        self.live: dict[str, LiveTurn] = {}
        self._pending: list[_PendingBegin] = []
        self._flushing = False
        self._nursery: trio.Nursery | None = None
        self.system_prompt = svc.settings.llm_system_prompt

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The server-wide nursery that owns every generation."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._checkpoint_loop)
            task_status.started()
            await trio.sleep_forever()

    # -- chat.send -------------------------------------------------------------

    async def send(self, *, user_id: str, data: ChatSend, listener: Listener) -> None:
        """Start (or join, for a known messageId) a turn. Raises ProtocolError before any ack."""
        received_at = time.perf_counter()
        conv_id, client_id, content = str(data.conversationId), str(data.messageId), data.content
        cache = self.svc.cache
        dup_key = f"dup:{user_id}:{conv_id}:{hashlib.sha256(content.encode()).hexdigest()[:32]}"
        known: bytes | None = None
        try:
            known, dup = await cache.get_many([f"idem:{conv_id}:{client_id}", dup_key])
            if known is None and dup is not None:
                raise ProtocolError(
                    ErrorCode.DUPLICATE_CONTENT,
                    "the same message was sent moments ago",
                    request_id=listener.request_id,
                )
        except CacheError:
            pass  # the database still finds duplicates by messageId
        breaker = getattr(self.upstream, "breaker", None)
        if (
            known is None  # a known messageId replays or joins: no upstream call needed
            and breaker is not None
            and breaker.state is BreakerState.OPEN
            and breaker.retry_in() > 0
        ):
            # Fail fast, before anything is stored: the upstream is being skipped.
            raise ProtocolError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                "the model is unavailable; retry shortly",
                request_id=listener.request_id,
                retry_after_ms=max(1, int(breaker.retry_in() * 1000)),
            )
        pending = _PendingBegin(
            store_messages.BeginRequest(
                user_id, conv_id, client_id, content, must_exist=known is not None
            ),
            listener,
            received_at,
            dup_key,
        )
        result = await self._begin(pending)
        outcome = result.outcome
        refusal = _REFUSALS.get(outcome)
        if refusal is not None:
            code, message, retry_after_ms = refusal
            raise ProtocolError(
                code, message, request_id=listener.request_id, retry_after_ms=retry_after_ms
            )
        user_msg, assistant = result.user_message, result.assistant_message
        assert user_msg is not None
        if outcome is store_messages.BeginOutcome.DUPLICATE:
            await self._duplicate(conv_id, user_msg, assistant, listener)
        # STARTED: the flusher has acknowledged it and started its task already.

    async def _begin(self, pending: _PendingBegin) -> store_messages.BeginResult:
        """Queue a turn start; concurrent ones share a transaction (group commit)."""
        self._pending.append(pending)
        if not self._flushing:
            self._flushing = True
            assert self._nursery is not None, "TurnManager.run() is not running"
            self._nursery.start_soon(self._flush_begins)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _flush_begins(self) -> None:
        """Start every queued turn, a batch per transaction, while any are queued. Runs in
        the server-wide nursery: a started turn is handed to its task here, with no await
        after the commit, so a requester that goes away cannot leave an ownerless row."""
        try:
            while self._pending:
                batch = self._pending[:BEGIN_BATCH_MAX]
                del self._pending[:BEGIN_BATCH_MAX]
                requests = [p.request for p in batch]
                try:
                    results = await self.svc.db.tx(
                        functools.partial(
                            store_messages.begin_turns,
                            requests=requests,
                            max_user_turns=MAX_TURNS_PER_USER,
                        )
                    )
                except Exception as exc:
                    for p in batch:
                        p.error = exc
                        p.done.set()
                    continue
                for p, res in zip(batch, results, strict=True):
                    p.result = res
                    if res.outcome is store_messages.BeginOutcome.STARTED:
                        self._start(p, res)
                    p.done.set()
        finally:
            self._flushing = False

    def _start(self, p: _PendingBegin, res: store_messages.BeginResult) -> None:
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
            listeners=[p.listener],
            dup_key=p.dup_key,
        )
        self.live[req.conversation_id] = live
        self._ack(live, p.listener, duplicate=False)
        assert self._nursery is not None
        self._nursery.start_soon(self._turn_task, live)

    def _ack(self, live: LiveTurn, listener: Listener, *, duplicate: bool) -> None:
        listener.outbox.push_frame(
            encode_server_frame(
                ServerType.CHAT_ACK,
                {
                    "conversationId": live.conversation_id,
                    "messageId": live.client_message_id,
                    "userSeq": live.user_message.seq,
                    "assistantMessageId": live.message_id,
                    "assistantSeq": live.seq,
                    "duplicate": duplicate,
                },
                request_id=listener.request_id,
                trace_id=listener.trace_id,
            ),
            ServerType.CHAT_ACK,
        )

    async def _duplicate(
        self,
        conv_id: str,
        user_msg: MessageRecord,
        assistant: MessageRecord | None,
        listener: Listener,
    ) -> None:
        """Ack with duplicate: true, then join the live answer or replay the stored one."""
        live = self.live.get(conv_id)
        if live is not None and live.user_message.id == user_msg.id and not live.finished.is_set():
            self._ack(live, listener, duplicate=True)
            if live.deltas:
                listener.outbox.push_stream(
                    conversation_id=conv_id,
                    message_id=live.message_id,
                    seq=live.seq,
                    chunk=len(live.deltas) - 1,
                    delta="".join(live.deltas),
                    request_id=listener.request_id,
                    trace_id=listener.trace_id,
                )
            live.attach(listener)
            return
        if assistant is None or assistant.deleted_at is not None:
            raise ProtocolError(
                ErrorCode.REPLAY_EXPIRED,
                "that message is no longer stored",
                request_id=listener.request_id,
            )
        if assistant.status == store_messages.STREAMING:
            # Finished between our read and now? Read the row again before saying busy.
            await trio.sleep(0.05)
            aid = assistant.id
            fresh = await self.svc.db.read(lambda c: store_messages.get_message(c, aid))
            if fresh is not None and fresh.status != store_messages.STREAMING:
                assistant = fresh
        if assistant.status == store_messages.STREAMING:
            # Streaming elsewhere (another instance) or a leftover: the caller may resume.
            raise ProtocolError(
                ErrorCode.CONVERSATION_BUSY,
                "this reply is streaming on another connection; resume the conversation",
                request_id=listener.request_id,
                retry_after_ms=1000,
            )
        stub = LiveTurn(
            conversation_id=conv_id,
            user_id=user_msg.user_id,
            client_message_id=str(user_msg.client_message_id),
            user_message=user_msg,
            assistant=assistant,
            history=[],
            received_at=0.0,
        )
        self._ack(stub, listener, duplicate=True)
        self.replay_stored(assistant, listener)

    def replay_stored(self, m: MessageRecord, listener: Listener) -> None:
        """A finished answer, again: its whole text as one merged delta, then chat.done."""
        if m.content:
            listener.outbox.push_stream(
                conversation_id=m.conversation_id,
                message_id=m.id,
                seq=m.seq,
                chunk=max(m.chunk_count, 1) - 1,
                delta=m.content,
                request_id=listener.request_id,
                trace_id=listener.trace_id,
            )
        listener.outbox.push_frame(
            encode_server_frame(
                ServerType.CHAT_DONE,
                _done_data(
                    m.conversation_id,
                    m.id,
                    m.seq,
                    m.status,
                    m.finish_reason,
                    m.chunk_count if m.content else 0,
                    m.completion_tokens or 0,
                    m.prompt_tokens,
                ),
                request_id=listener.request_id,
                trace_id=listener.trace_id,
            ),
            ServerType.CHAT_DONE,
        )

    # -- chat.resume -----------------------------------------------------------

    async def resume(self, *, user_id: str, data: ChatResume, listener: Listener) -> None:
        """Replay what the client misses, say ``chat.resumed``, then go on live."""
        conv_id = str(data.conversationId)
        after = data.lastMessageSeq
        for _attempt in range(2):
            view = await self.svc.db.read(
                lambda c: store_messages.resume_view(
                    c,
                    user_id=user_id,
                    conversation_id=conv_id,
                    after_seq=after,
                    limit=REPLAY_MAX_MESSAGES + 1,
                )
            )
            if view is None:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, "no such conversation", request_id=listener.request_id
                )
            last_seq, rows = view
            live = self.live.get(conv_id)
            if live is not None and live.finished.is_set():
                live = None
            orphan = any(status == store_messages.STREAMING for _, _, status in rows)
            if live is None and orphan and _attempt == 0:
                await trio.sleep(0.05)  # a turn finishing right now: read again
                continue
            break
        in_flight = InFlight(live.seq, tuple(enumerate(live.deltas))) if live is not None else None
        plan = plan_resume(
            last_message_seq=after,
            last_chunk=data.lastChunk,
            server_last_seq=last_seq,
            stored=[StoredRef(seq, size) for seq, size, _ in rows],
            in_flight=in_flight,
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
        live = self.live.get(conv_id)
        if live is not None and (live.finished.is_set() or live.seq != plan.in_flight_seq):
            live = None
        if live is None and plan.in_flight_seq is not None:
            # It finished while we read: its row is stored (chat.done follows the write),
            # so it goes out whole, as a chat.message.
            seq = plan.in_flight_seq
            records += await self.svc.db.read(
                lambda c: store_messages.messages_by_seq(c, conv_id, [seq])
            )
            live = self.live.get(conv_id)
            if live is not None and live.seq != seq:
                live = None
        for m in records:
            listener.outbox.push_frame(
                encode_server_frame(
                    ServerType.CHAT_MESSAGE,
                    message_json(m),
                    request_id=listener.request_id,
                    trace_id=listener.trace_id,
                ),
                ServerType.CHAT_MESSAGE,
            )
        replayed = len(records)
        if live is not None:
            # What the client holds of the in-flight message; the plan checked it is valid.
            held = -1
            if data.lastChunk is not None and live.seq == after + 1:
                held = data.lastChunk
            missing = live.deltas[held + 1 :]  # up to now: deltas may have come during the read
            if missing:
                listener.outbox.push_stream(
                    conversation_id=conv_id,
                    message_id=live.message_id,
                    seq=live.seq,
                    chunk=len(live.deltas) - 1,
                    delta="".join(missing),
                    request_id=listener.request_id,
                    trace_id=listener.trace_id,
                )
                replayed += 1
        self._resumed(conv_id, listener, replayed=replayed, live=live is not None, reset=False)
        if live is not None:
            live.attach(listener)

    def _resumed(
        self, conv_id: str, listener: Listener, *, replayed: int, live: bool, reset: bool
    ) -> None:
        listener.outbox.push_frame(
            encode_server_frame(
                ServerType.CHAT_RESUMED,
                {"conversationId": conv_id, "replayed": replayed, "live": live, "reset": reset},
                request_id=listener.request_id,
                trace_id=listener.trace_id,
            ),
            ServerType.CHAT_RESUMED,
        )

    # -- chat.cancel -----------------------------------------------------------

    def cancel(self, *, user_id: str, conversation_id: str, message_id: str) -> bool:
        live = self.live.get(conversation_id)
        if live is None or live.user_id != user_id or live.message_id != message_id:
            return False
        live.cancel_requested = True
        live.cancel_scope.cancel()
        return True

    def interrupt_all(self) -> int:
        """Drain: cut every turn still running; each ends ``interrupted``, text stored."""
        for live in self.live.values():
            live.cancel_scope.cancel()
        return len(self.live)

    def cancel_conversation(self, conversation_id: str) -> None:
        """The conversation was deleted: stop its turn (it ends cancelled)."""
        live = self.live.get(conversation_id)
        if live is not None:
            live.cancel_requested = True
            live.cancel_scope.cancel()

    def detach(self, outbox: OutboxLike) -> None:
        """A connection closed: stop sending it frames (the turns go on)."""
        for live in self.live.values():
            live.listeners = [lst for lst in live.listeners if lst.outbox is not outbox]

    # -- the generation --------------------------------------------------------

    def _broadcast_delta(self, live: LiveTurn, chunk: int, text: str, t0: float) -> None:
        for lst in live.listeners:
            lst.outbox.push_stream(
                conversation_id=live.conversation_id,
                message_id=live.message_id,
                seq=live.seq,
                chunk=chunk,
                delta=text,
                request_id=lst.request_id,
                trace_id=lst.trace_id,
                t0=t0,
                gap=live.gap,
            )

    def _upstream_messages(self, live: LiveTurn) -> list[ChatMessage]:
        msgs: list[ChatMessage] = []
        if self.system_prompt:
            msgs.append(ChatMessage("system", self.system_prompt))
        for role, content in live.history:
            if role in ("user", "assistant", "system"):
                msgs.append(ChatMessage(role, content))  # type: ignore[arg-type]
        return msgs

    async def _turn_task(self, live: LiveTurn) -> None:
        """One turn, start to finish. Nothing escapes: the server-wide nursery must live on."""
        try:
            try:
                # Bookkeeping runs beside the generation: the upstream request goes first.
                assert self._nursery is not None
                self._nursery.start_soon(self._remember_keys, live)
                await self._generate_and_settle(live)
            finally:
                # Also on shutdown (the nursery is cancelled): the turn still ends, stored as
                # interrupted, with its chat.done pushed; bounded so shutdown stays quick.
                with trio.CancelScope(shield=True):
                    if not live.turn.is_terminal:
                        live.turn.finish(TurnState.INTERRUPTED)
                    deadline = 5.0 if self.svc.draining.is_set() else FINISH_DEADLINE
                    with trio.move_on_after(deadline):
                        await self._finish(live)
                    if not live.finished.is_set():  # the write hung past the deadline
                        self._unstored(live)
        except Exception:
            log.exception(
                "turn_task_failed", convId=live.conversation_id, messageId=live.message_id
            )

    async def _remember_keys(self, live: LiveTurn) -> None:
        with contextlib.suppress(Exception):  # bookkeeping: never fails a turn
            await note_activity(self.svc, live.user_id)
        try:
            pipe = self.svc.cache.pipeline()
            pipe.set(
                f"idem:{live.conversation_id}:{live.client_message_id}",
                live.message_id,
                ttl=IDEMPOTENCY_TTL,
            )
            pipe.set(live.dup_key, b"1", ttl=DUPLICATE_WINDOW)
            await pipe.execute()
        except CacheError:
            pass  # the database still answers duplicates by messageId

    async def _generate_and_settle(self, live: LiveTurn) -> None:
        turn = live.turn
        with live.cancel_scope:
            try:
                await self._generate(live)
            except UpstreamError as exc:
                live.error = ProtocolError(_upstream_code(exc), str(exc))
            except Exception:
                log.exception(
                    "turn_crashed", convId=live.conversation_id, messageId=live.message_id
                )
                live.error = ProtocolError(ErrorCode.SERVER_ERROR, "the reply failed")
        if not turn.is_terminal:
            if live.error is not None:
                turn.finish(TurnState.FAILED, "error")
            elif live.cancel_requested:
                turn.finish(TurnState.CANCELLED)

    def _unstored(self, live: LiveTurn) -> None:
        """The end could not be stored. chat.done only follows a stored end, so the
        listeners get SERVER_ERROR instead; the row stays "streaming" until recovery
        (single instance: the next start ends it "interrupted"; resume delivers it then)."""
        log.error("finish_not_stored", convId=live.conversation_id, messageId=live.message_id)
        self._forget(live)
        for lst in live.listeners:
            lst.outbox.push_frame(
                encode_server_frame(
                    ServerType.ERROR,
                    ProtocolError(
                        ErrorCode.SERVER_ERROR,
                        "the reply could not be stored; resume the conversation later",
                    ).to_data(),
                    request_id=lst.request_id,
                    trace_id=lst.trace_id,
                ),
                ServerType.ERROR,
            )

    def _forget(self, live: LiveTurn) -> None:
        live.finished.set()
        if self.live.get(live.conversation_id) is live:
            del self.live[live.conversation_id]

    async def _generate(self, live: LiveTurn) -> None:
        turn = live.turn
        metrics = self.svc.metrics
        sent_at = time.perf_counter()
        metrics.dispatch_seconds.observe(sent_at - live.received_at)
        async with self.upstream.stream(
            self._upstream_messages(live), max_tokens=MAX_OUTPUT_TOKENS
        ) as events:
            async for event in events:
                if isinstance(event, TokenDelta):
                    t0 = time.perf_counter()
                    if live.last_delta_at:
                        live.gap += 0.3 * (t0 - live.last_delta_at - live.gap)
                    live.last_delta_at = t0
                    if turn.state is TurnState.PENDING:
                        turn.start_streaming()
                    result = turn.add_delta(event.text)
                    if result.chunk is not None:
                        live.deltas.append(result.text)
                        self._broadcast_delta(live, result.chunk, result.text, t0)
                    if result.truncated:
                        return
                elif isinstance(event, StreamEnd):
                    if event.usage is not None:
                        live.usage_in = event.usage.prompt_tokens
                    if turn.state is TurnState.PENDING:
                        turn.finish(TurnState.COMPLETED, event.finish_reason or "stop")
                    elif event.finish_reason == "length":
                        turn.finish(TurnState.TRUNCATED, "length")
                    else:
                        turn.finish(TurnState.COMPLETED, event.finish_reason or "stop")
                    return

    async def _checkpoint_loop(self) -> None:
        """Every 500 ms, store the text so far of every turn that grew, in one transaction
        for the whole instance (not one per turn: 1,000 streams would be 2,000 a second)."""
        while True:
            await trio.sleep(CHECKPOINT_SECONDS)
            dirty = [
                live
                for live in self.live.values()
                if len(live.deltas) > live.saved_chunks and not live.finished.is_set()
            ]
            if not dirty:
                continue
            items = [(live.message_id, "".join(live.deltas), len(live.deltas)) for live in dirty]
            try:
                await self.svc.db.tx(functools.partial(store_messages.checkpoint_many, items=items))
            except Exception:
                log.warning("checkpoint_failed", turns=len(items), exc_info=True)
                continue
            for live, (_mid, _text, chunks) in zip(dirty, items, strict=True):
                live.saved_chunks = chunks

    async def _finish(self, live: LiveTurn) -> None:
        """Store the final text and status, then send the error (if any) and chat.done."""
        turn = live.turn
        status = turn.message_status.value
        text = turn.text
        stored = False
        for attempt in range(12):  # about 40 s of retries: chat.done waits for the write
            try:
                await self.svc.db.tx(
                    lambda c: store_messages.finish_message(
                        c,
                        live.message_id,
                        content=text,
                        status=status,
                        finish_reason=turn.finish_reason,
                        chunk_count=turn.chunks,
                        prompt_tokens=live.usage_in,
                        completion_tokens=turn.output_tokens,
                    )
                )
                stored = True
                break
            except Exception:
                log.warning("finish_write_failed", attempt=attempt, exc_info=True)
                await trio.sleep(min(5.0, 0.25 * 2**attempt))
        if not stored:
            self._unstored(live)
            return
        self.svc.metrics.turns.labels(status).inc()
        if live.error is not None and turn.chunks == 0:
            # Nothing reached the client: a retry with a new messageId must not be refused.
            with contextlib.suppress(CacheError):
                await self.svc.cache.delete(live.dup_key)
        self._forget(live)
        for lst in live.listeners:
            if live.error is not None:
                err = live.error
                self.svc.metrics.errors.labels(err.error_class.value, err.code.value).inc()
                lst.outbox.push_frame(
                    encode_server_frame(
                        ServerType.ERROR,
                        err.to_data(),
                        request_id=lst.request_id,
                        trace_id=lst.trace_id,
                    ),
                    ServerType.ERROR,
                )
            lst.outbox.push_frame(
                encode_server_frame(
                    ServerType.CHAT_DONE,
                    _done_data(
                        live.conversation_id,
                        live.message_id,
                        live.seq,
                        status,
                        turn.finish_reason,
                        turn.chunks,
                        turn.output_tokens,
                        live.usage_in,
                    ),
                    request_id=lst.request_id,
                    trace_id=lst.trace_id,
                ),
                ServerType.CHAT_DONE,
            )
