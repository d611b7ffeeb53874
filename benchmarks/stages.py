"""Per-stage micro-benchmarks: where the microseconds of one token and one frame go.

Each stage runs alone, in this process, on the code Parley runs, with real inputs shaped
like the comparison scenario's (an OpenAI-compatible chunk of one short token; a
``chat.stream`` frame of one delta). CPU time per operation is the median of ``--repeat``
rounds of ``--n`` operations (``time.process_time``: this process's CPU, all threads).

Read side, per token:
  ``chunked_decode``  server.llm.h11stream.ChunkedDecoder.feed on one HTTP chunk
  ``line_split``      LineSplitter.feed on its payload
  ``sse_json_chunk``  SSEDecoder.feed (orjson parse inside) + ChunkParser.feed per line
  ``resilience``      ResilientUpstream around a provider yielding ready events (no I/O):
                      what the timeouts/retries/breaker layer adds per event, read as the
                      turn runner reads it (``Call.drive``); ``resilience_iterated``: read
                      with ``async for`` (a cancel scope per event)
  ``turn_delta``      protocol.turn.Turn.add_delta
  ``trio_socket_recv`` one send + one receive_some of a chunk over a trio socketpair
                      (the syscalls and the scheduler, per upstream read)
Write side, per frame:
  ``outbox``          Outbox.push_stream + pop (the frame's JSON encoding included)
  ``wsproto_encode``  wsproto server-side Message → bytes
  ``trio_socket_send`` send_all of one frame's bytes over a trio socketpair (+ the read)

    .venv/bin/python benchmarks/stages.py            # writes benchmarks/results/stages.json

The whole-stack figures these add up to (and do not cover: Hypercorn/Quart's per-frame
path, the event loop's scheduling of the turn and writer tasks) are in comparison.json
and upstream_reader.json; benchmarks/README.md puts them side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import wsproto
from wsproto.events import Message

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import machine  # noqa: E402
from protocol.outgoing import ReplyTo, StreamDelta  # noqa: E402
from protocol.turn import Turn  # noqa: E402
from server.llm import ChatMessage, ResilientUpstream, StreamEnd, TokenDelta  # noqa: E402
from server.llm.h11stream import ChunkedDecoder, LineSplitter  # noqa: E402
from server.llm.sse import ChunkParser, SSEDecoder  # noqa: E402
from server.ws.outbox import Outbox  # noqa: E402

RESULTS = HERE / "results"

# One SSE event as an OpenAI-compatible server (and the fake upstream) sends it.
EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"fake","choices":[{"index":0,"delta":{"content":" tok42"},'
    b'"finish_reason":null}]}\n\n'
)
CHUNK = f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"


def _rounds(fn: Callable[[int], None], n: int, repeat: int) -> float:
    """Median CPU microseconds per operation over ``repeat`` rounds of ``n``."""
    fn(max(1, n // 10))  # warm-up
    per = []
    for _ in range(repeat):
        c0 = time.process_time()
        fn(n)
        per.append((time.process_time() - c0) / n * 1e6)
    return statistics.median(per)


def chunked_decode(n: int) -> None:
    dec = ChunkedDecoder()
    for _ in range(n):
        dec.feed(CHUNK)


def line_split(n: int) -> None:
    split = LineSplitter()
    for _ in range(n):
        split.feed(EVENT)


def sse_json_chunk(n: int) -> None:
    dec, parser = SSEDecoder(), ChunkParser()
    lines = EVENT.decode().split("\n")[:-1]  # "data: {...}", ""
    for _ in range(n):
        for line in lines:
            payload = dec.feed(line)
            if payload is not None:
                parser.feed(payload, dec.parsed)


def turn_delta(n: int) -> None:
    turn = Turn(max_output_tokens=n + 10, max_output_bytes=(n + 10) * 8)
    turn.start_streaming()
    for _ in range(n):
        turn.add_delta(" tok42", 1)


def outbox(n: int) -> None:
    box = Outbox(max_frames=n + 10, max_bytes=(n + 10) * 1000)
    reply = ReplyTo(None, "0" * 32)
    conv, msg = "c" * 36, "m" * 36
    for i in range(n):
        box.push_stream(StreamDelta(conv, msg, 2, i, " tok42"), reply, None, 1.0)
        box.pop()


def wsproto_encode(n: int) -> None:
    conn = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    box = Outbox(max_frames=10, max_bytes=100_000)
    box.push_stream(StreamDelta("c" * 36, "m" * 36, 2, 7, " tok42"), ReplyTo(None, "0" * 32))
    item = box.pop()
    assert item is not None
    text = item[0].text
    for _ in range(n):
        conn.send(Message(data=text))


class _ReadyProvider:
    """A provider whose stream yields ``n`` ready events: no I/O at all."""

    def __init__(self, n: int) -> None:
        self.n = n

    @asynccontextmanager
    async def _stream(self) -> AsyncIterator[AsyncIterator[Any]]:
        async def events() -> AsyncIterator[Any]:
            for _ in range(self.n):
                yield TokenDelta(" tok42")
            yield StreamEnd("stop")

        yield events()

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Any:
        return self._stream()

    async def aclose(self) -> None:
        return None


def _trio(fn: Callable[[int], Any]) -> Callable[[int], None]:
    return lambda n: trio.run(fn, n)


async def _resilience_async(n: int, how: str) -> None:
    """``how``: "direct" (the provider's events alone), "iterate" (``async for`` over the
    resilient call: a cancel scope per event) or "drive" (``Call.drive``, as the turn
    runner reads: one scope per attempt, its deadline moved lazily)."""
    provider = _ReadyProvider(n)
    if how == "direct":
        async with provider.stream([], max_tokens=n) as events:
            async for _ in events:
                pass
        return
    async with ResilientUpstream(provider).stream([], max_tokens=n) as call:
        if how == "drive":
            await call.drive(lambda _event: False)
        else:
            async for _ in call:
                pass


async def _socket_roundtrip(n: int, payload: bytes) -> None:
    """``n`` times: ``send_all(payload)`` on one end of a trio socketpair, one
    ``receive_some`` on the other."""
    a, b = trio.socket.socketpair()
    sa, sb = trio.SocketStream(a), trio.SocketStream(b)
    for _ in range(n):
        await sa.send_all(payload)
        await sb.receive_some(65536)
    await sa.aclose()
    await sb.aclose()


def _frame_bytes() -> bytes:
    conn = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    return conn.send(Message(data='{"type":"chat.stream","data":{"delta":" tok42"}}' * 4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "stages.json")
    args = parser.parse_args()
    n, rep = args.n, args.repeat
    direct = _rounds(_trio(lambda k: _resilience_async(k, "direct")), n, rep)
    iterated = _rounds(_trio(lambda k: _resilience_async(k, "iterate")), n, rep)
    driven = _rounds(_trio(lambda k: _resilience_async(k, "drive")), n, rep)
    read = {
        "chunked_decode": _rounds(chunked_decode, n, rep),
        "line_split": _rounds(line_split, n, rep),
        "sse_json_chunk": _rounds(sse_json_chunk, n, rep),
        "async_generator_alone": direct,
        "resilience": driven - direct,
        "resilience_iterated": iterated - direct,
        "turn_delta": _rounds(turn_delta, n, rep),
        "trio_socket_recv": _rounds(_trio(lambda k: _socket_roundtrip(k, CHUNK)), n, rep),
    }
    write = {
        "outbox": _rounds(outbox, n, rep),
        "wsproto_encode": _rounds(wsproto_encode, n, rep),
        "trio_socket_send": _rounds(_trio(lambda k: _socket_roundtrip(k, _frame_bytes())), n, rep),
    }
    result = {
        "command": " ".join(["benchmarks/stages.py", *sys.argv[1:]]),
        "machine": machine(),
        "n": n,
        "repeat": rep,
        "cpu_us_per_token": {k: round(v, 2) for k, v in read.items()},
        "cpu_us_per_frame": {k: round(v, 2) for k, v in write.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
