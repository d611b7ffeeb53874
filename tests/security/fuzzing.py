"""WebSocket frame strategies (Hypothesis) and a client that drives a real socket from a
synchronous Hypothesis test: a trio loop in a thread holds the connection ("the portal").

Frames: valid ones of every client type; near-valid ones (one field wrong in turn: missing,
another type, null, huge, negative, empty, over the limit, an extra field); garbage text;
hostile JSON (deep nesting, duplicate keys, huge numbers, NaN, lone surrogates, NUL and
control characters, invalid UTF-8 in binary frames); binary frames; rarely, an oversized
frame (over 64 KiB: close 1009, then the client reconnects).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import orjson
import trio
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

__all__ = ["Portal", "frames"]

CONV = "00000000-0000-4000-8000-00000000c0de"  # replaced by a real conversation id
TYPES = ["chat.send", "chat.cancel", "chat.resume", "auth.refresh", "ping"]

uuids = st.uuids().map(str)
small_text = st.text(min_size=1, max_size=60)
odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just("x" * 8001),
)


def _data(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    conv = st.one_of(uuids, st.just(CONV))
    if kind == "chat.send":  # never the real conversation: a valid send would store rows
        return st.fixed_dictionaries(
            {"conversationId": uuids, "messageId": uuids, "content": small_text}
        )
    if kind == "chat.cancel":
        return st.fixed_dictionaries({"conversationId": conv, "messageId": uuids})
    if kind == "chat.resume":
        return st.fixed_dictionaries(
            {"conversationId": conv, "lastMessageSeq": st.integers(0, 2**31 - 1)},
            optional={"lastChunk": st.one_of(st.none(), st.integers(-1, 10_000))},
        )
    if kind == "auth.refresh":
        return st.fixed_dictionaries({"accessToken": st.text(min_size=1, max_size=80)})
    return st.just({})


def _envelope(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just(kind), "data": _data(kind)},
        optional={"requestId": st.text(max_size=64), "traceId": st.text(max_size=40)},
    )


valid = st.sampled_from(TYPES).flatmap(_envelope)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with one thing wrong: a field dropped, retyped, or one added."""
    frame = draw(valid)
    where = draw(st.sampled_from(["envelope", "data"]))
    target = frame if where == "envelope" or not frame["data"] else frame["data"]
    how = draw(st.sampled_from(["drop", "retype", "add"]))
    keys = sorted(target)
    if how == "drop" and keys:
        del target[draw(st.sampled_from(keys))]
    elif how == "retype" and keys:
        target[draw(st.sampled_from(keys))] = draw(odd_values)
    else:
        target[draw(st.text(min_size=1, max_size=10))] = draw(odd_values)
    return frame


_SEND_SURROGATE = (
    '{"type":"chat.send","data":{"conversationId":"'
    + CONV
    + '","messageId":"'
    + str(uuid.UUID(int=1))
    + '","content":"\\ud800"}}'
)
hostile_text = st.one_of(
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 5000).map(lambda n: '{"type":"ping","data":' + "{" * n + "}" * n + "}"),
    st.just('{"type":"ping","type":"chat.send","data":{}}'),
    st.sampled_from(["1e400", "9" * 400, "-0", "1.5", "NaN", "Infinity"]).map(
        lambda n: (
            '{"type":"chat.resume","data":{"conversationId":"'
            + CONV
            + '","lastMessageSeq":'
            + n
            + "}}"
        )
    ),
    st.just('{"type":"ping","data":{},"requestId":NaN}'),
    st.just(_SEND_SURROGATE),
    st.just('{"type":"chat.send","data":{"content":"a\\u0000b"}}'),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),
    st.sampled_from(TYPES).map(
        lambda t: '{"type":"' + t + '","requestId":"\x00\x07\x1b","data":{}}'
    ),
)
garbage = st.one_of(
    st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
)
binary = st.binary(max_size=300)  # sent as a binary frame (invalid UTF-8 included)
oversized = st.integers(65_537, 70_000).map(
    lambda n: '{"type":"ping","data":{"x":"' + "a" * n + '"}}'
)


def _dump(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False)  # stdlib: integers past 64 bits too


#: What one example sends: text (a str) or a binary frame (bytes).
frames: st.SearchStrategy[str | bytes] = st.integers(0, 199).flatmap(
    lambda i: (
        oversized
        if i == 0
        else st.one_of(
            valid.map(_dump),
            near_valid().map(_dump),
            hostile_text,
            garbage,
            binary,
        )
    )
)


class Portal:
    """A trio loop in a thread holding one WebSocket; ``exchange`` from any thread."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.ws: WebSocketConnection | None = None
        self.reconnects = 0
        self._n = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    def __enter__(self) -> Portal:
        self._thread.start()
        assert self._ready.wait(10)
        self.call(self._connect)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, afn: Any, *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    async def _connect(self) -> None:
        self.ws = await connect_websocket_url(
            self._nursery,
            self.url,
            subprotocols=["chat.v1", f"bearer.{self.token}"],
            message_queue_size=10_000,
        )
        with trio.fail_after(5):
            hello = orjson.loads(await self.ws.get_message())
        assert hello["type"] == "session.ready", hello

    async def _exchange(self, payload: str | bytes) -> tuple[list[str], int | None]:
        """Send one frame, then a ping with a marker; the frames before the marker's pong,
        or the close code if the server closed (then reconnect)."""
        assert self.ws is not None
        self._n += 1
        marker = f"fz-{self._n}"
        got: list[str] = []
        try:
            await self.ws.send_message(payload)
            await self.ws.send_message(orjson.dumps({"type": "ping", "requestId": marker}).decode())
            with trio.fail_after(10):  # a stuck connection fails the example
                while True:
                    text = await self.ws.get_message()
                    frame = orjson.loads(text)
                    if frame.get("type") == "pong" and frame.get("requestId") == marker:
                        return got, None
                    got.append(text)
        except ConnectionClosed as closed:
            code = closed.reason.code
            await self.ws.aclose()
            self.reconnects += 1
            await self._connect()
            return got, code

    def exchange(self, payload: str | bytes) -> tuple[list[str], int | None]:
        result: tuple[list[str], int | None] = self.call(self._exchange, payload)
        return result
