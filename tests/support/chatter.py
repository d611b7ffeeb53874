"""A client that behaves like a good browser client: it sends one message, follows the
answer, and when its connection drops (killed instance, drain, a network fault) it
reconnects to the next instance and resumes from exactly what it holds.

It counts what a user would notice: chunks received twice (``duplicates``), more than one
``chat.done`` (``dones``), and it reconstructs the answer from what it was sent, to be
compared with what the database stored.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from tests.support.wsclient import Rest

__all__ = ["Chatter", "Outcome"]


@dataclass
class Outcome:
    text: str = ""
    status: str | None = None
    dones: int = 0  # ends seen: a chat.done, or the finished message whole (chat.message)
    done_frames: int = 0
    duplicates: int = 0
    reconnects: int = 0
    resets: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    message_id: str | None = None


class Chatter:
    def __init__(self, urls: list[str], token: str, conversation_id: str) -> None:
        self.urls = urls
        self.token = token
        self.conv = conversation_id
        self.held_seq = 0  # the highest seq held whole
        self.user_seq: int | None = None
        self.assistant_seq: int | None = None
        self.last_chunk = -1
        self.parts: list[str] = []
        self.out = Outcome()
        self._next = random.randrange(len(urls))
        self.last_url = urls[0]
        self.timeline: list[tuple[float, str]] = []  # (monotonic time, what happened)
        self.ready_timeout = 5.0  # seconds for the handshake and session.ready

    def _url(self) -> str:
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    async def ask(
        self,
        content: str,
        *,
        drop_after_chunks: int | None = None,
        timeout: float = 60.0,
    ) -> Outcome:
        """Send ``content`` and follow the answer to its ``chat.done`` (reconnecting and
        resuming as needed). ``drop_after_chunks``: close the socket once, mid-answer."""
        message_id = str(uuid.uuid4())
        drop = drop_after_chunks
        with trio.move_on_after(timeout) as waited:
            while self.out.dones == 0:
                try:
                    drop = await self._session(content, message_id, drop)
                except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError) as exc:
                    self.timeline.append((time.monotonic(), f"ended: {exc!r}"[:200]))
                if self.out.dones == 0:
                    self.out.reconnects += 1
                    await trio.sleep(0.1 + random.random() * 0.2)
        if waited.cancelled_caught:
            raise AssertionError(
                f"no end of the answer in {timeout} s: conversation {self.conv}, held seq "
                f"{self.held_seq}, assistant seq {self.assistant_seq}, last chunk "
                f"{self.last_chunk}, {self.out}"
            )
        if self.out.resets:
            # After a reset the client reloads history over REST: that is what it shows.
            history = await Rest(self.last_url).history(self.token, self.conv)
            mine = [m for m in history if m["seq"] == self.assistant_seq]
            self.out.text = mine[0]["content"] if mine else self.out.text
        else:
            self.out.text = "".join(self.parts)
        return self.out

    async def _session(self, content: str, message_id: str, drop: int | None) -> int | None:
        url = self._url()
        self.timeline.append((time.monotonic(), f"connect {url}"))
        # Our own deadline for the handshake and session.ready, not trio-websocket's
        # connect_timeout: when that one fires after the TCP connect, the context manager
        # waits for its reader task for ever (trio-websocket 0.12.2; an instance that
        # answers the upgrade late, e.g. just restarted, left clients hanging).
        with trio.CancelScope(deadline=trio.current_time() + self.ready_timeout) as opening:
            async with open_websocket_url(
                url,
                subprotocols=["chat.v1", f"bearer.{self.token}"],
                message_queue_size=100_000,
                connect_timeout=math.inf,
            ) as ws:
                hello = orjson.loads(await ws.get_message())
                opening.deadline = math.inf
                assert hello["type"] == "session.ready", hello
                self.last_url = url.replace("ws://", "http://").removesuffix("/ws")
                self.timeline.append((time.monotonic(), "ready"))
                return await self._converse(ws, content, message_id, drop)
        self.timeline.append((time.monotonic(), f"no session.ready within {self.ready_timeout} s"))
        return drop

    async def _converse(
        self, ws: WebSocketConnection, content: str, message_id: str, drop: int | None
    ) -> int | None:
        if self.assistant_seq is None:
            # No ack yet: (re)send with the same messageId (idempotent).
            data: dict[str, Any] = {
                "conversationId": self.conv,
                "messageId": message_id,
                "content": content,
            }
            await ws.send_message(orjson.dumps({"type": "chat.send", "data": data}).decode())
            self.timeline.append((time.monotonic(), "sent chat.send"))
        else:
            data = {
                "conversationId": self.conv,
                "lastMessageSeq": self.held_seq,
                "lastChunk": self.last_chunk,
            }
            await ws.send_message(orjson.dumps({"type": "chat.resume", "data": data}).decode())
            self.timeline.append((time.monotonic(), "sent chat.resume"))
        while self.out.dones == 0:
            frame = orjson.loads(await ws.get_message())
            if frame["type"] != "chat.stream":
                self.timeline.append((time.monotonic(), frame["type"]))
            reconnect_in = self._apply(frame)
            if reconnect_in is not None:
                await trio.sleep(reconnect_in)
                return drop
            if drop is not None and self.last_chunk >= drop:
                return None  # the socket closes here, mid-answer
        return drop

    def _apply(self, frame: dict[str, Any]) -> float | None:
        """Take one frame; seconds to wait before reconnecting when the server drains."""
        kind, data = frame["type"], frame["data"]
        if kind == "chat.ack":
            self.user_seq, self.assistant_seq = data["userSeq"], data["assistantSeq"]
            self.held_seq = max(self.held_seq, data["userSeq"])
            self.out.message_id = data["assistantMessageId"]
        elif kind == "chat.stream" and data["seq"] == self.assistant_seq:
            if data["chunk"] <= self.last_chunk:
                self.out.duplicates += 1
            else:
                self.parts.append(data["delta"])
                self.last_chunk = data["chunk"]
        elif kind == "chat.message" and data["seq"] == self.assistant_seq:
            self.parts = [data["content"]]  # the whole message replaces what was held
            if data["status"] != "streaming":
                self.out.dones += 1
                self.out.status = data["status"]
        elif kind == "chat.done" and data["seq"] == self.assistant_seq:
            self.out.dones += 1
            self.out.done_frames += 1
            self.out.status = data["status"]
            self.held_seq = data["seq"]
        elif kind == "chat.resumed" and data["reset"]:
            self.out.resets += 1
        elif kind == "error":
            self.out.errors.append(data)
            if self.assistant_seq is None and data["retryable"]:
                # The send was refused (nothing stored): retry it as a client would.
                return float(data.get("retryAfterMs") or 500) / 1000
        elif kind == "server.draining":
            return float(data["reconnectAfterMs"]) / 1000
        return None
