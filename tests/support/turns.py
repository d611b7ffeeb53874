"""Fakes for testing the turns package without sockets: an outbox that records frames,
an upstream that yields what the test sends into it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import trio

from protocol.codec import validate_server_frame
from protocol.outgoing import OutboundFrame, ReplyTo, StreamDelta
from server.llm.base import ChatMessage, StreamEnd, TokenDelta, UpstreamError

__all__ = ["FakeOutbox", "FakeUpstream"]


class FakeOutbox:
    """Records what a connection would be sent, as (type, data) pairs."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.arrived = trio.Event()

    def push_frame(self, frame: OutboundFrame) -> None:
        validate_server_frame(frame.text)
        self.frames.append((frame.type, orjson.loads(frame.text)["data"]))
        self.arrived.set()

    def push_stream(
        self, delta: StreamDelta, reply: ReplyTo, t0: float | None = None, gap: float = 1.0
    ) -> None:
        self.frames.append(
            ("chat.stream", {"chunk": delta.chunk, "delta": delta.text, "seq": delta.seq})
        )
        self.arrived.set()

    def types(self) -> list[str]:
        return [t for t, _ in self.frames]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [d for t, d in self.frames if t == type_]

    def text(self) -> str:
        return "".join(d["delta"] for d in self.of("chat.stream"))

    async def wait_for(self, type_: str, count: int = 1) -> None:
        with trio.fail_after(10):
            while len(self.of(type_)) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()


class _FakeCall:
    """What ``ResilientUpstream.stream`` yields (``server.llm.resilience.Call``), minus
    the timeouts: iterable, or driven with a callback."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._receive = receive

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        async for item in self._receive:
            if isinstance(item, Exception):
                raise item
            yield item
            if isinstance(item, StreamEnd):
                return

    async def drive(self, on_event: Callable[[Any], bool]) -> None:
        async with contextlib.aclosing(self._events()) as events:
            async for item in events:
                if on_event(item):
                    return


class FakeUpstream:
    """Each stream() yields what the test sends into it; ``fail`` ends it with an error."""

    def __init__(self) -> None:
        self.calls: list[list[ChatMessage]] = []
        self.unavailable = 0.0
        self._send, self._receive = trio.open_memory_channel[Any](100)

    def unavailable_for(self) -> float:
        return self.unavailable

    @contextlib.asynccontextmanager
    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AsyncIterator[_FakeCall]:
        self.calls.append(list(messages))

        yield _FakeCall(self._receive)

    async def token(self, *texts: str) -> None:
        for t in texts:
            await self._send.send(TokenDelta(t))

    async def end(self, reason: str = "stop") -> None:
        await self._send.send(StreamEnd(reason))

    async def fail(self) -> None:
        await self._send.send(UpstreamError("boom", retryable=False))
