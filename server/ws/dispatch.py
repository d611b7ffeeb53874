"""What each client frame does: one handler per client frame type.

A handler raises ``ProtocolError`` for a refusal; the connection's reader turns
it into an ``error`` frame. Every frame that starts work (``chat.*``) first
re-checks the session against the deny-list and the token's expiry; a ``chat.send``
whose session only the database can vouch for is asked in the turn start's own
transaction (one round trip fewer before the upstream request).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from protocol import outgoing
from protocol.close_codes import CloseCode, close_reason
from protocol.codec import ClientFrame
from protocol.errors import AUTH_CLOSE_CODES, ErrorCode, ProtocolError
from protocol.frames import AuthRefresh, ChatCancel, ChatResume, ChatSend, ClientType, Ping
from protocol.outgoing import ReplyTo
from server.auth.identity import (
    UNREAD,
    authenticate,
    deny_key,
    is_session_denied,
    note_revoked_session,
    session_known,
)
from server.services import Services
from server.turns import Listener, TurnManager
from server.turns.starts import precheck_keys
from server.ws.abuse import FrameBudget
from server.ws.state import Connection, WsConfig
from store.cache import CacheError
from store.db import utcnow

__all__ = ["Dispatcher"]


@dataclass
class Dispatcher:
    svc: Services
    turns: TurnManager
    cfg: WsConfig

    def ready_frame(self, conn: Connection, reply: ReplyTo) -> outgoing.OutboundFrame:
        return outgoing.session_ready(
            reply,
            user_id=conn.user_id,
            session_id=conn.session_id,
            connection_id=conn.id,
            server_time=utcnow(),
            limits={
                "maxFrameBytes": self.cfg.max_frame_bytes,
                "maxContentChars": self.cfg.max_content_chars,
                "maxConcurrentTurns": self._max_turns(conn) or self.turns.cfg.max_turns_per_user,
                "chatSendPerMinute": self._sends_per_minute(conn),
            },
        )

    def reply_error(self, conn: Connection, err: ProtocolError, reply: ReplyTo) -> None:
        """The one way the connection answers an error: counted, then sent. Sustained
        RATE_LIMITED answers (server/ws/abuse.py) then close the connection with 4029."""
        self.svc.metrics.count_error(err.error_class.value, err.code.value)
        conn.outbox.push_frame(outgoing.error(err, reply))
        if err.code is ErrorCode.RATE_LIMITED and self.budget(conn).sustained():
            self.svc.metrics.ws_dropped.labels("rate_limited").inc()
            conn.close(int(CloseCode.RATE_LIMITED), close_reason(CloseCode.RATE_LIMITED))

    def _sends_per_minute(self, conn: Connection) -> int:
        """Guests get fewer than registered users (issue 12)."""
        s = self.svc.settings
        if conn.claims.kind == "guest":
            return s.guest_chat_sends_per_minute
        return s.chat_sends_per_user_per_minute

    def _max_turns(self, conn: Connection) -> int | None:
        """Guests stream fewer turns at once (None: the server's cap)."""
        if conn.claims.kind == "guest":
            return min(self.svc.settings.guest_max_turns, self.turns.cfg.max_turns_per_user)
        return None

    def _stored_bytes_cap(self, conn: Connection) -> int:
        """What this user may keep; checked by the turn start (``TurnManager.send``)."""
        s = self.svc.settings
        if conn.claims.kind == "guest":
            return s.guest_max_stored_bytes
        return s.max_stored_bytes_per_user

    def budget(self, conn: Connection) -> FrameBudget:
        if conn.budget is None:
            conn.budget = self.cfg.frame_budget()
        return conn.budget

    async def dispatch(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        handler = self._handlers[frame.type]
        await handler(self, conn, frame, reply)

    # -- handlers -----------------------------------------------------------------

    async def _ping(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        assert isinstance(frame.data, Ping)
        budget = self.budget(conn)
        budget.take(budget.pings, "ping")
        conn.outbox.push_frame(outgoing.pong(reply))

    async def _auth_refresh(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        assert isinstance(frame.data, AuthRefresh)
        principal = await authenticate(self.svc, frame.data.accessToken)
        if principal.user_id != conn.user_id:
            raise ProtocolError(ErrorCode.AUTH_INVALID, "the new token is for another user")
        conn.claims, conn.session_id = principal.claims, principal.session_id
        conn.outbox.push_frame(self.ready_frame(conn, reply))

    async def _chat_send(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        data = frame.data
        assert isinstance(data, ChatSend)
        cap = self._stored_bytes_cap(conn)
        # One cache round trip for the send: its rate limit, the session's deny-list entry
        # and the keys the turn start checks (idempotency, duplicate content, quota).
        keys = precheck_keys(
            conn.user_id, str(data.conversationId), str(data.messageId), data.content, True
        )
        try:
            allowed, retry_after, values = await self.svc.cache.hit_rate_and_get(
                f"rl:send:{conn.user_id}",
                self._sends_per_minute(conn),
                60,
                [deny_key(conn.session_id), *keys],
            )
            denied, prefetched = values[0], values[1:]
        except CacheError:  # fail open on the limit; the checks read again, or the database
            allowed, retry_after, denied, prefetched = True, 0.0, UNREAD, None
        check: str | None = None
        if session_known(self.svc, conn.session_id, denied) is None and (
            conn.claims.exp > time.time()
        ):
            check = conn.session_id  # only the database can tell: the turn start asks it
        elif not await self._session_ok(conn, reply, denied):
            return
        if self.svc.draining.is_set():
            raise ProtocolError(
                ErrorCode.SERVER_DRAINING,
                "this server is restarting; reconnect and send again",
                retry_after_ms=self.cfg.drain_reconnect_ms,
            )
        if not allowed:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                "too many messages; slow down",
                retry_after_ms=max(1, int(retry_after * 1000)),
            )
        try:
            await self.turns.send(
                user_id=conn.user_id,
                data=data,
                listener=Listener(conn.outbox, reply),
                max_turns=self._max_turns(conn),
                max_stored_bytes=cap,
                prefetched=prefetched,
                check_session=check,
            )
        except ProtocolError as err:
            if check is None or err.code is not ErrorCode.AUTH_INVALID:
                raise
            await note_revoked_session(self.svc, conn.session_id)
            self._refuse_session(conn, err, reply)

    async def _chat_cancel(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        data = frame.data
        assert isinstance(data, ChatCancel)
        if not await self._session_ok(conn, reply):
            return
        if not await self.turns.cancel(
            user_id=conn.user_id,
            conversation_id=str(data.conversationId),
            message_id=str(data.messageId),
        ):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such reply in flight")

    async def _chat_resume(self, conn: Connection, frame: ClientFrame, reply: ReplyTo) -> None:
        data = frame.data
        assert isinstance(data, ChatResume)
        if not await self._session_ok(conn, reply):
            return
        budget = self.budget(conn)
        budget.take(budget.resumes, "chat.resume")
        await self.turns.resume(
            user_id=conn.user_id, data=data, listener=Listener(conn.outbox, reply)
        )

    async def _session_ok(self, conn: Connection, reply: ReplyTo, cached: Any = UNREAD) -> bool:
        """Every frame that starts work re-checks the deny-list (revocation within seconds;
        ``cached``: its entry, when the caller has read it).

        A revoked session or an expired token: the error goes out first, then the close.
        """
        if await is_session_denied(self.svc, conn.session_id, cached):
            err = ProtocolError(ErrorCode.AUTH_INVALID, "session revoked")
        elif conn.claims.exp <= time.time():
            err = ProtocolError(ErrorCode.AUTH_EXPIRED, "access token expired; refresh it")
        else:
            return True
        self._refuse_session(conn, err, reply)
        return False

    def _refuse_session(self, conn: Connection, err: ProtocolError, reply: ReplyTo) -> None:
        """The error goes out first, then the close with the auth close code."""
        self.reply_error(conn, err, reply)
        code = AUTH_CLOSE_CODES[err.code]
        conn.close(int(code), close_reason(code))

    _handlers: ClassVar[
        dict[ClientType, Callable[[Dispatcher, Connection, ClientFrame, ReplyTo], Awaitable[None]]]
    ] = {
        ClientType.PING: _ping,
        ClientType.AUTH_REFRESH: _auth_refresh,
        ClientType.CHAT_SEND: _chat_send,
        ClientType.CHAT_CANCEL: _chat_cancel,
        ClientType.CHAT_RESUME: _chat_resume,
    }
