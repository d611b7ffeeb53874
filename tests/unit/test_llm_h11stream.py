"""server/llm/h11stream.py (H11Pool) and OpenAIProvider(transport="h11") against a tiny
in-process trio TCP server that writes raw HTTP bytes: framing, line splitting,
keep-alive reuse and its limits, errors, cancellation."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from server.llm import ChatMessage, OpenAIProvider, StreamEnd, TokenDelta, UpstreamError, Usage
from server.llm.base import StreamEvent
from server.llm.h11stream import ChunkedDecoder, H11Pool, LineSplitter

# A connection the client forgot to close is closed by the GC: make that fail the test.
pytestmark = pytest.mark.filterwarnings(
    "error::ResourceWarning", "error::pytest.PytestUnraisableExceptionWarning"
)

MSGS = [ChatMessage("user", "hi")]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode()


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces)
    return body + (b"0\r\n\r\n" if end else b"")


def sse_response(*payloads: bytes) -> bytes:
    return SSE_HEAD + chunked(*(b"data: " + p + b"\n\n" for p in payloads))


def json_response(status: int, obj: Any, extra: bytes = b"") -> bytes:
    body = json.dumps(obj).encode()
    head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        len(body),
    )
    return head + extra + b"\r\n" + body


OK_BODY = sse_response(chunk("a"), chunk("b"), chunk(None, "stop"), b"[DONE]")
OK_EVENTS = [TokenDelta("a"), TokenDelta("b"), StreamEnd("stop", None)]


@dataclass
class Server:
    """Counts accepts and requests; `handler(server, stream, conn_no)` serves one connection."""

    handler: Callable[[Server, trio.SocketStream, int], Awaitable[None]]
    accepts: int = 0
    requests: list[tuple[h11.Request, bytes]] = field(default_factory=list)
    eofs: int = 0  # connections the client closed while the server waited on them
    closed: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        try:
            await self.handler(self, stream, self.accepts)
        except trio.BrokenResourceError:
            self.eofs += 1
        finally:
            await stream.aclose()

    async def read_request(self, stream: trio.SocketStream) -> bool:
        """One request (its own h11 state: the client never pipelines); False at EOF."""
        conn = h11.Connection(h11.SERVER)
        req: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert req is not None
                self.requests.append((req, body))
                return True
            else:
                return False

    async def wait_eof(self, stream: trio.SocketStream) -> None:
        with trio.fail_after(5):
            if await stream.receive_some(1) == b"":
                self.eofs += 1
                self.closed.set()


@asynccontextmanager
async def serving(
    handler: Callable[[Server, trio.SocketStream, int], Awaitable[None]],
) -> AsyncIterator[tuple[Server, str]]:
    server = Server(handler)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), server, 0)
        port = listeners[0].socket.getsockname()[1]
        yield server, f"http://127.0.0.1:{port}/v1"
        nursery.cancel_scope.cancel()


def keep_alive(
    *responses: bytes, head_apart: bool = False
) -> Callable[[Server, trio.SocketStream, int], Awaitable[None]]:
    """Answers requests on a connection in turn with `responses` (cycling, across
    connections), until the client closes it; `head_apart`: the head, a pause, the rest."""
    sent = 0

    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        nonlocal sent
        while await server.read_request(stream):
            response = responses[sent % len(responses)]
            if head_apart:
                cut = response.index(b"\r\n\r\n") + 4
                await stream.send_all(response[:cut])
                await trio.sleep(0.01)
                response = response[cut:]
            await stream.send_all(response)
            sent += 1
        server.closed.set()  # the client closed it

    return handler


async def collect(p: OpenAIProvider, messages: list[ChatMessage] = MSGS) -> list[StreamEvent]:
    async with p.stream(messages, max_tokens=7) as events:
        return [e async for e in events]


async def failure(p: OpenAIProvider) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await collect(p)
    return info.value


# -- line splitting ---------------------------------------------------------------------

LINES_RAW = 'data: {"a": "é€"}\r\n\r\ndata: x\n\n: c\ndata: [DONE]\r\ntail'.encode()
LINES = ['data: {"a": "é€"}', "", "data: x", "", ": c", "data: [DONE]", "tail"]


def test_line_splitter_at_every_split_point() -> None:
    n = len(LINES_RAW)
    for i in range(n + 1):
        for j in range(i, n + 1):
            split = LineSplitter()
            got: list[str] = []
            for piece in (LINES_RAW[:i], LINES_RAW[i:j], LINES_RAW[j:]):
                got += split.feed(bytearray(piece))
            tail = split.flush()
            assert [*got, *([tail] if tail is not None else [])] == LINES, (i, j)


def test_line_splitter_keeps_a_lone_cr_and_replaces_bad_utf8() -> None:
    split = LineSplitter()
    assert split.feed(b"a\rb\n\xff\n") == ["a\rb", "\ufffd"]
    assert split.flush() is None


# -- chunked decoding ---------------------------------------------------------------------

CHUNKED_RAW = b"5\r\nhello\r\n1;ext=1\r\n,\r\n9 \r\n world \r\n\r\n0\r\nX-T: 1\r\n\r\n"


def test_chunked_decoder_at_every_split_point() -> None:
    n = len(CHUNKED_RAW)
    for i in range(n + 1):
        for j in range(i, n + 1):
            dec = ChunkedDecoder()
            got = b""
            for piece in (CHUNKED_RAW[:i], CHUNKED_RAW[i:j], CHUNKED_RAW[j:]):
                assert not dec.done or not piece  # done only at the last byte
                got += dec.feed(piece)
            assert got == b"hello, world \r\n" and dec.done and dec.leftover == b"", (i, j)


def test_chunked_decoder_keeps_what_follows_the_end() -> None:
    dec = ChunkedDecoder()
    assert dec.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1") == b"abc"
    assert dec.done and dec.leftover == b"HTTP/1.1"


@pytest.mark.parametrize(
    "raw",
    [b"zz\r\n", b"-1\r\n", b"0x5\r\n", b"1_0\r\n", b"3\r\nabcX\r\n", b"9" * 5000],
    ids=["not-hex", "negative", "0x", "underscore", "no-crlf-after-data", "endless-size"],
)
def test_chunked_decoder_rejects_malformed_input(raw: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        ChunkedDecoder().feed(raw)


# -- framing ------------------------------------------------------------------------------


async def test_chunked_sse_split_at_awkward_boundaries_and_request_shape() -> None:
    body = chunked(
        b'data: {"choices":[{"index":0,"delta":{"content":"He',  # a line across chunks
        b'llo"},"finish_reason":null}]}\r\n\r\ndata: ' + chunk(" wor") + b"\r\n\r\n",
        b"data: " + chunk("ld") + b"\n\ndata: " + chunk(None, "stop") + b"\n\n",
        b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3}}).encode(),
        b"\n\ndata: [DONE]\n\n",
    )
    raw = SSE_HEAD + body
    # Cuts: inside the head, inside a chunk-size line, between \r and \n, inside JSON.
    cuts = [10, len(SSE_HEAD) + 1, len(SSE_HEAD) + 3, raw.index(b"\r\n\r\ndata") + 1, len(raw) - 9]

    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        await server.read_request(stream)
        for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            await stream.send_all(raw[a:b])
            await trio.sleep(0.01)
        await server.wait_eof(stream)

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, "sk-x", "m1", transport="h11")
        events = await collect(p)
        await p.aclose()
    assert events == [
        TokenDelta("Hello"),
        TokenDelta(" wor"),
        TokenDelta("ld"),
        StreamEnd("stop", Usage(3, 0)),
    ]
    req, sent = server.requests[0]
    assert req.method == b"POST" and req.target == b"/v1/chat/completions"
    headers = dict(req.headers)
    assert headers[b"host"] == url.split("//")[1].removesuffix("/v1").encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"accept"] == b"text/event-stream"
    assert headers[b"authorization"] == b"Bearer sk-x"
    assert headers[b"user-agent"] == b"parley"
    assert headers[b"content-length"] == str(len(sent)).encode()
    assert json.loads(sent) == p.request_body(MSGS, 7)


@pytest.mark.parametrize("head_apart", [False, True])
async def test_content_length_bodies_with_and_without_done(head_apart: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
    no_done = b"data: " + chunk("x") + b"\r\n\r\ndata: " + chunk(None, "length") + b"\n"
    done = no_done + b"\ndata: [DONE]\n\n"  # the reader stops at [DONE], before the end
    responses = (head % len(no_done) + no_done, head % len(done) + done)
    async with serving(keep_alive(*responses, head_apart=head_apart)) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        for _ in range(4):
            assert await collect(p) == [TokenDelta("x"), StreamEnd("length", None)]
        await p.aclose()
    assert server.accepts == 1 and len(server.requests) == 4
    assert b"authorization" not in dict(server.requests[0][0].headers)


async def test_bytes_after_the_end_of_a_chunked_body_mean_no_reuse() -> None:
    async with serving(keep_alive(OK_BODY + b"junk", OK_BODY)) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert await collect(p) == OK_EVENTS
        assert p._pool is not None and p._pool.idle_count() == 0
        assert await collect(p) == OK_EVENTS
        assert p._pool.idle_count() == 1
        await p.aclose()
    assert server.accepts == 2


async def test_connection_close_and_trailers_mean_no_reuse() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    body = chunked(b"data: " + chunk("x", "stop") + b"\n\ndata: [DONE]\n\n", end=False)
    close = head + b"Connection: close\r\n\r\n" + body + b"0\r\n\r\n"
    trailers = SSE_HEAD + body + b"0\r\nX-Checksum: 1\r\n\r\n"
    async with serving(keep_alive(close, trailers, trailers)) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert p._pool is not None
        for idle in (0, 1, 1):
            assert await collect(p) == [TokenDelta("x"), StreamEnd("stop", None)]
            assert p._pool.idle_count() == idle
        await p.aclose()
    assert server.accepts == 2 and len(server.requests) == 3


async def test_json_answer_when_the_server_ignores_stream() -> None:
    answer = {"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}
    async with serving(keep_alive(json_response(200, answer), head_apart=True)) as (_, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert await collect(p) == [TokenDelta("whole"), StreamEnd("stop", None)]
        await p.aclose()


# -- keep-alive ---------------------------------------------------------------------------


async def test_sequential_streams_share_one_connection() -> None:
    async with serving(keep_alive(OK_BODY, head_apart=True)) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        for _ in range(3):
            assert await collect(p) == OK_EVENTS
        assert p._pool is not None and p._pool.idle_count() == 1
        assert not server.closed.is_set()
        await p.aclose()
        with trio.fail_after(5):
            await server.closed.wait()  # aclose closed the pooled connection
    assert server.accepts == 1 and len(server.requests) == 3


async def test_an_address_is_connected_straight_and_a_name_resolved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolved: list[str] = []
    real = trio.open_tcp_stream

    async def resolving(host: str, port: int, **kw: Any) -> trio.SocketStream:
        resolved.append(host)
        return await real(host, port, **kw)

    monkeypatch.setattr(trio, "open_tcp_stream", resolving)
    async with serving(keep_alive(OK_BODY)) as (server, url):
        for each in (url, url.replace("127.0.0.1", "localhost")):
            p = OpenAIProvider(each, None, "m", transport="h11")
            assert await collect(p) == OK_EVENTS
            await p.aclose()
    assert resolved == ["localhost"]  # the address needed no resolver
    assert server.accepts == 2 and len(server.requests) == 2


async def test_abandoned_stream_connection_is_closed_not_reused() -> None:
    first = SSE_HEAD + chunked(b"data: " + chunk("a") + b"\n\n", end=False)

    async def handler(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_request(stream)
        if n == 1:
            await stream.send_all(first)  # and never the rest
            await server.wait_eof(stream)
        else:
            await stream.send_all(OK_BODY)
            await server.wait_eof(stream)

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        async with p.stream(MSGS, max_tokens=5) as events:
            async for e in events:
                assert e == TokenDelta("a")
                break  # the caller stops early
        assert p._pool is not None and p._pool.idle_count() == 0
        with trio.fail_after(5):
            await server.closed.wait()
        assert await collect(p) == OK_EVENTS
        assert server.accepts == 2
        await p.aclose()


async def test_server_closing_an_idle_connection_means_a_fresh_one() -> None:
    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        await server.read_request(stream)
        await stream.send_all(OK_BODY)  # then close: keep-alive is over

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert await collect(p) == OK_EVENTS
        await trio.sleep(0.05)  # the FIN arrives while the connection sits in the pool
        assert await collect(p) == OK_EVENTS
        await p.aclose()
    assert server.accepts == 2 and len(server.requests) == 2


async def test_stale_keep_alive_failing_before_the_response_is_retried_once() -> None:
    async def handler(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_request(stream)
        await stream.send_all(OK_BODY)
        if n == 1:
            await server.read_request(stream)  # closed without an answer: stale keep-alive
            return
        await server.wait_eof(stream)

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert await collect(p) == OK_EVENTS
        assert await collect(p) == OK_EVENTS
        await p.aclose()
    assert server.accepts == 2 and len(server.requests) == 3


async def test_reused_connection_failing_mid_head_is_not_retried() -> None:
    async def handler(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_request(stream)
        await stream.send_all(OK_BODY)
        await server.read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")  # part of a head, then closed

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        assert await collect(p) == OK_EVENTS
        err = await failure(p)
        await p.aclose()
    assert err.retryable and err.message.startswith("upstream request failed:")
    assert server.accepts == 1 and len(server.requests) == 2


async def test_fresh_connection_closed_before_the_response_is_not_retried() -> None:
    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        await server.read_request(stream)

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        err = await failure(p)
        await p.aclose()
    assert err.retryable and err.status is None
    assert err.message.startswith("upstream request failed:")
    assert server.accepts == 1


async def test_idle_expiry_and_idle_bound() -> None:
    async with serving(keep_alive(OK_BODY)) as (server, url):
        pool = H11Pool(idle_expiry=0.1, max_idle_per_origin=1)
        full = url + "/chat/completions"

        async def one() -> None:
            async with pool.stream_post(full, {}) as resp:
                assert [line async for line in resp.aiter_lines()][-2] == "data: [DONE]"

        async with trio.open_nursery() as nursery:  # two at once: two connections
            for _ in range(2):
                nursery.start_soon(one)
        assert server.accepts == 2 and pool.idle_count() == 1  # one over the bound
        await trio.sleep(0.2)
        await one()  # the idle one has expired
        assert server.accepts == 3 and pool.idle_count() == 1
        async with pool.stream_post(full, {}) as resp:
            await pool.aclose()  # while a stream is in use: it is closed when released
            assert [line async for line in resp.aiter_lines()][-2] == "data: [DONE]"
        assert pool.idle_count() == 0


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", *args], check=True, capture_output=True)
    return cert, key


async def test_https_verifies_the_certificate_and_keeps_the_connection(
    self_signed: tuple[Path, Path],
) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    plain = keep_alive(OK_BODY)

    async def handler(server: Server, stream: trio.SocketStream, n: int) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return  # the client refused the certificate
        await plain(server, tls, n)  # type: ignore[arg-type]

    async with serving(handler) as (server, url):
        url = url.replace("http://", "https://") + "/chat/completions"
        trusted = H11Pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            async with trusted.stream_post(url, {"x": 1}) as resp:
                assert resp.status == 200
                assert "data: [DONE]" in [line async for line in resp.aiter_lines()]
        assert server.accepts == 1 and trusted.idle_count() == 1
        await trusted.aclose()
        with pytest.raises(UpstreamError) as info:  # the system CAs do not know this one
            async with H11Pool().stream_post(url, {}):
                raise AssertionError("unreachable")
    assert info.value.retryable and "CERTIFICATE_VERIFY_FAILED" in info.value.message


# -- errors -------------------------------------------------------------------------------


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = H11Pool()
    with pytest.raises(UpstreamError) as info:
        async with pool.stream_post(f"http://127.0.0.1:{port}/x", {}):
            raise AssertionError("unreachable")
    assert info.value.retryable and info.value.status is None
    assert info.value.message.startswith("upstream request failed:")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_connect_timeout_is_retryable(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    async def never(*_args: Any, **_kw: Any) -> None:
        await trio.sleep_forever()

    class Stalled:  # a socket whose connect never completes
        connect = staticmethod(never)

        def close(self) -> None:
            pass

    monkeypatch.setattr(trio, "open_tcp_stream", never)  # a host name
    monkeypatch.setattr(trio.socket, "socket", lambda *_a, **_kw: Stalled())  # an address
    pool = H11Pool(connect_timeout=0.05)
    with pytest.raises(UpstreamError) as info:
        async with pool.stream_post(f"http://{host}:9/x", {}):
            raise AssertionError("unreachable")
    assert info.value.retryable and info.value.status is None
    assert info.value.message == "upstream request failed: connect timeout after 0.05s"


@pytest.mark.parametrize(
    ("status", "retryable", "retry_after"),
    [(500, True, None), (400, False, None), (429, True, 2.5), (503, True, 0.0)],
)
async def test_http_errors_map_like_the_httpx_transport(
    status: int, retryable: bool, retry_after: float | None
) -> None:
    extra = b"" if retry_after is None else b"Retry-After: %g\r\n" % retry_after
    response = json_response(status, {"error": {"message": "nope", "code": status}}, extra)
    async with serving(keep_alive(response, head_apart=True)) as (server, url):
        errors = []
        for transport in ("httpx", "h11"):
            p = OpenAIProvider(url, None, "m", transport=transport)
            errors.append(await failure(p))
            if transport == "h11":
                assert p._pool is not None and p._pool.idle_count() == 1  # body read: kept
            await p.aclose()
    h, e = errors
    assert (e.message, e.retryable, e.status, e.retry_after) == (
        f"upstream HTTP {status}: nope",
        retryable,
        status,
        retry_after,
    )
    assert (h.message, h.retryable, h.status, h.retry_after) == (
        e.message,
        e.retryable,
        e.status,
        e.retry_after,
    )
    assert len(server.requests) == 2


async def test_connection_dropped_mid_body_is_retryable() -> None:
    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        await server.read_request(stream)
        await stream.send_all(SSE_HEAD + chunked(b"data: " + chunk("a") + b"\n\n", end=False))

    async with serving(handler) as (_server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        got: list[StreamEvent] = []
        with pytest.raises(UpstreamError) as info:
            async with p.stream(MSGS, max_tokens=5) as events:
                async for e in events:
                    got.append(e)
        assert p._pool is not None and p._pool.idle_count() == 0
        await p.aclose()
    assert got == [TokenDelta("a")]
    assert info.value.retryable and info.value.message.startswith("upstream stream broken:")


# -- cancellation -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["head", "body", "caller"])
async def test_cancellation_closes_the_connection_quietly(where: str) -> None:
    async def handler(server: Server, stream: trio.SocketStream, _n: int) -> None:
        await server.read_request(stream)
        if where != "head":
            await stream.send_all(SSE_HEAD + chunked(b"data: " + chunk("a") + b"\n\n", end=False))
        await server.wait_eof(stream)

    async with serving(handler) as (server, url):
        p = OpenAIProvider(url, None, "m", transport="h11")
        got: list[StreamEvent] = []
        with trio.move_on_after(0.2 if where == "head" else 10) as scope:
            async with p.stream(MSGS, max_tokens=5) as events:
                async for e in events:
                    got.append(e)
                    # "body": cancelled waiting for more; "caller": while holding the stream
                    scope.deadline = trio.current_time() + 0.05
                    if where == "caller":
                        await trio.sleep(10)
        assert scope.cancelled_caught
        assert got == ([] if where == "head" else [TokenDelta("a")])
        assert p._pool is not None and p._pool.idle_count() == 0
        with trio.fail_after(5):
            await server.closed.wait()  # the client closed it
        await p.aclose()
    assert server.eofs == 1


def test_constructor_rejects_bad_transport_options() -> None:
    with pytest.raises(ValueError):
        OpenAIProvider("http://x/v1", None, "m", transport="curl")
    with pytest.raises(ValueError):
        OpenAIProvider("http://x/v1", None, "m", transport="h11", http_client=object())  # type: ignore[arg-type]
