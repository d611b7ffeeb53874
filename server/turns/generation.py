"""One generation, start to finish: call the upstream, relay deltas, checkpoint, store the end.

``chat.done`` goes out only after the final text and status are stored. A turn
always ends: on an upstream fault (``failed``, partial text kept), on cancel,
on shutdown (``interrupted``), and if its end cannot be stored the listeners
get ``SERVER_ERROR`` instead (the row is recovered later).
"""

from __future__ import annotations

import contextlib
import functools
import time

import trio

from protocol import outgoing
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import Role
from protocol.turn import TurnState
from server.auth.identity import note_activity
from server.llm.base import (
    ChatMessage,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.logging import get_logger
from server.services import Services
from server.turns.config import TurnConfig
from server.turns.live import LiveTurn, Upstream, stored_done
from server.turns.observe import TurnObserver
from server.turns.relay import Relay, end_payload
from server.turns.starts import idem_key
from store import messages as store_messages
from store.cache import CacheError

__all__ = ["Generation"]

log = get_logger("parley.turns")

_ROLES = frozenset(r.value for r in Role)


def upstream_code(exc: UpstreamError) -> ErrorCode:
    if isinstance(exc, UpstreamUnavailable):
        return ErrorCode.UPSTREAM_UNAVAILABLE
    if isinstance(exc, UpstreamTimeout):
        return ErrorCode.UPSTREAM_TIMEOUT
    return ErrorCode.UPSTREAM_ERROR


class Generation:
    """Runs the turns of this instance; ``live`` is the registry (conversation id → turn)."""

    def __init__(
        self,
        svc: Services,
        upstream: Upstream,
        cfg: TurnConfig,
        live: dict[str, LiveTurn],
        relay: Relay,
    ) -> None:
        self.svc = svc
        self.upstream = upstream
        self.cfg = cfg
        self.live = live
        self.relay = relay

    def upstream_messages(self, live: LiveTurn) -> list[ChatMessage]:
        msgs: list[ChatMessage] = []
        if self.cfg.system_prompt:
            msgs.append(ChatMessage("system", self.cfg.system_prompt))
        for role, content in live.history:
            if role in _ROLES:
                msgs.append(ChatMessage(role, content))  # type: ignore[arg-type]
        return msgs

    async def run(self, live: LiveTurn, nursery: trio.Nursery) -> None:
        """One turn. Nothing escapes: the server-wide nursery must live on."""
        obs = TurnObserver(live)
        try:
            try:
                # Bookkeeping runs beside the generation: the upstream request goes first.
                nursery.start_soon(self._remember_keys, live)
                await self._generate_and_settle(live, obs)
            finally:
                # Also on shutdown (the nursery is cancelled): the turn still ends, stored as
                # interrupted, with its chat.done pushed; bounded so shutdown stays quick.
                with trio.CancelScope(shield=True):
                    if not live.turn.is_terminal:
                        live.turn.finish(TurnState.INTERRUPTED)
                    deadline = 5.0 if self.svc.draining.is_set() else self.cfg.finish_deadline
                    with trio.move_on_after(deadline):
                        await self._finish(live)
                    if live.is_live:  # the write hung past the deadline
                        self._unstored(live)
                    err = live.error.code.value if live.error is not None else None
                    obs.done(live.turn.message_status.value, live.turn.chunks, err)
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
                idem_key(live.conversation_id, live.client_message_id),
                live.message_id,
                ttl=self.cfg.idempotency_ttl,
            )
            if self.cfg.duplicate_window > 0:
                pipe.set(live.dup_key, b"1", ttl=self.cfg.duplicate_window)
            self.relay.lease(pipe, live)
            await pipe.execute()
        except CacheError:
            pass  # the database still answers duplicates by messageId

    async def _generate_and_settle(self, live: LiveTurn, obs: TurnObserver) -> None:
        turn = live.turn
        with live.cancel_scope:
            try:
                await self._generate(live, obs)
                obs.upstream_done()
            except UpstreamError as exc:
                live.error = ProtocolError(upstream_code(exc), str(exc))
                obs.upstream_done(live.error.code.value)
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

    async def _generate(self, live: LiveTurn, obs: TurnObserver) -> None:
        turn = live.turn
        sent_at = time.perf_counter()
        self.svc.metrics.dispatch_seconds.observe(sent_at - live.received_at)
        obs.dispatched()
        relay = self.relay

        def on_event(event: StreamEvent) -> bool:
            """One upstream event (no awaits: see ``Call.drive``); True ends the stream."""
            if isinstance(event, TokenDelta):
                t0 = time.perf_counter()
                if live.last_delta_at:
                    live.gap += 0.3 * (t0 - live.last_delta_at - live.gap)
                live.last_delta_at = t0
                if turn.state is TurnState.PENDING:
                    turn.start_streaming()
                    obs.token()
                result = turn.add_delta(event.text)
                if result.chunk is not None:
                    live.send_delta(live.delta(result.chunk, result.text), t0)
                    relay.on_delta(live, result.chunk, result.text)
                return result.truncated
            if isinstance(event, StreamEnd):
                if event.usage is not None:
                    live.usage_in = event.usage.prompt_tokens
                if turn.state is TurnState.STREAMING and event.finish_reason == "length":
                    turn.finish(TurnState.TRUNCATED, "length")
                else:
                    turn.finish(TurnState.COMPLETED, event.finish_reason or "stop")
                return True
            return False

        async with self.upstream.stream(
            self.upstream_messages(live), max_tokens=self.cfg.max_output_tokens
        ) as call:
            await call.drive(on_event)

    async def checkpoint_loop(self) -> None:
        """Every checkpoint interval, store the text so far of every turn that grew, in one
        transaction for the whole instance (one per turn: 1,000 streams would be 2,000 a s)."""
        while True:
            await trio.sleep(self.cfg.checkpoint_seconds)
            dirty = [
                live
                for live in self.live.values()
                if live.turn.chunks > live.saved_chunks and live.is_live
            ]
            if not dirty:
                continue
            items = [(live.message_id, live.turn.text, live.turn.chunks) for live in dirty]
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
        for attempt in range(12):  # about 40 s of retries: chat.done waits for the write
            try:
                stored = await self.svc.db.tx(
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
                break
            except Exception:
                log.warning("finish_write_failed", attempt=attempt, exc_info=True)
                await trio.sleep(min(5.0, 0.25 * 2**attempt))
        else:
            self._unstored(live)
            return
        if not stored:
            await self._fenced(live)
            return
        self.svc.metrics.turns.labels(status).inc()
        if live.error is not None and turn.chunks == 0:
            # Nothing reached the client: a retry with a new messageId must not be refused.
            with contextlib.suppress(CacheError):
                await self.svc.cache.delete(live.dup_key)
        self._forget(live)
        if live.error is not None:
            self._send_error(live, live.error)
        live.send(live.done_frame)
        await self.relay.end(
            live,
            end_payload(
                status=status,
                finish_reason=turn.finish_reason,
                chunks=turn.chunks,
                output_tokens=turn.output_tokens,
                input_tokens=live.usage_in,
                error=live.error,
            ),
        )

    async def _fenced(self, live: LiveTurn) -> None:
        """Another instance already stored this turn's end (it took this one for dead): that
        end stands; the listeners get it as stored, never a second, different one."""
        log.warning("finish_fenced", convId=live.conversation_id, messageId=live.message_id)
        self._forget(live)
        row = await self.svc.db.read(lambda c: store_messages.get_message(c, live.message_id))
        if row is None:
            return
        live.send(functools.partial(stored_done, m=row))

    def _send_error(self, live: LiveTurn, err: ProtocolError) -> None:
        """One error event: counted once, sent to every listener."""
        self.svc.metrics.count_error(err.error_class.value, err.code.value)
        live.send(functools.partial(outgoing.error, err))

    def _unstored(self, live: LiveTurn) -> None:
        """The end could not be stored. chat.done only follows a stored end, so the
        listeners get SERVER_ERROR instead; the row stays "streaming" until recovery
        (single instance: the next start ends it "interrupted"; resume delivers it then)."""
        log.error("finish_not_stored", convId=live.conversation_id, messageId=live.message_id)
        self._forget(live)
        self._send_error(
            live,
            ProtocolError(
                ErrorCode.SERVER_ERROR,
                "the reply could not be stored; resume the conversation later",
            ),
        )

    def _forget(self, live: LiveTurn) -> None:
        live.finished.set()
        if self.live.get(live.conversation_id) is live:
            del self.live[live.conversation_id]
