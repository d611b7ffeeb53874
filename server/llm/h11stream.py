"""A lean HTTP/1.1 client for one job: POST a JSON body, stream the answer back.

trio sockets (`trio.SSLStream` for https) + h11, pooled per (scheme, host, port),
in place of httpx → httpcore → anyio, costly per token. h11 writes the request,
parses the response head and non-chunked bodies; a chunked body (SSE) is decoded
by `ChunkedDecoder` (~5 times cheaper per chunk than h11) and cut into lines by
`LineSplitter`; at its end h11 gets a bare last chunk and decides keep-alive.

A connection is pooled again only if its response was read to the end (an end
already received counts: SSE readers stop at [DONE], just before it) and h11
says both sides are DONE; any other (caller stopped early, cancelled, error) is
closed at once, without awaiting. Idle ones: at most `max_idle_per_origin`,
closed after `idle_expiry` seconds, skipped if the server closed them; a reused
one failing before any byte of the response (a stale keep-alive) is retried
once, on a new one. Faults raise a retryable `UpstreamError`; read timeouts are
the caller's (`ResilientUpstream`).

Over 400 lines: one client, its parts used by nothing else (the line splitter and the
chunked decoder feed the response, the response is the pool's, the pool opens the
connections); split, each would be a module with one caller.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
import trio

from .base import UpstreamError

__all__ = ["ChunkedDecoder", "H11Pool", "H11Response", "LineSplitter"]

_RECV = 65536
_MAX_LINE = 8 * 1024 * 1024
_MAX_HEAD = 64 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")  # as h11 finds the end of a head
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?[ \t]*")  # size, extensions
# Connection faults; trio wraps socket errors of an open stream in BrokenResourceError.
_BROKEN: tuple[type[Exception], ...] = (OSError, trio.BrokenResourceError, h11.ProtocolError)
_CONNECT_FAILED: tuple[type[Exception], ...] = (trio.TooSlowError, *_BROKEN)
_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)

Origin = tuple[str, str, int]


class LineSplitter:
    """Bytes in, complete lines out: split at b"\\n", a b"\\r" before it dropped, each
    line decoded once (UTF-8, bad bytes replaced). A lone b"\\r" is not a line end."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes | bytearray) -> list[str]:
        cut = data.rfind(b"\n")
        pending = self._pending
        if cut < 0:
            pending += data
            if len(pending) > _MAX_LINE:
                raise UpstreamError(f"upstream sent a line over {_MAX_LINE} bytes", retryable=True)
            return []
        if pending:
            pending += data[:cut]
            text = pending.decode("utf-8", "replace")
            del pending[:]
        else:
            text = data[:cut].decode("utf-8", "replace")
        if cut + 1 < len(data):
            pending += data[cut + 1 :]
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        return lines

    def flush(self) -> str | None:
        """End of the body: the last line if it had no line ending."""
        if not self._pending:
            return None
        text = self._pending.decode("utf-8", "replace").removesuffix("\r")
        del self._pending[:]
        return text


class ChunkedDecoder:
    """``Transfer-Encoding: chunked`` (RFC 9112 7.1): raw bytes in, payload out. Chunk
    extensions and trailers are dropped; `done` after the last chunk and the trailers;
    `leftover` is what came after that (a well-behaved server sends nothing)."""

    __slots__ = ("_buf", "_left", "_state", "done", "leftover")

    def __init__(self) -> None:
        self._buf: bytes | bytearray = b""
        self._left = 0
        self._state = _SIZE
        self.done = False
        self.leftover: bytes | bytearray = b""

    def feed(self, data: bytes | bytearray) -> bytes | bytearray:
        b = self._buf + data if self._buf else data
        out: list[bytes | bytearray] = []
        pos, n = 0, len(b)
        while pos < n:
            state = self._state
            if state == _DATA:
                end = min(n, pos + self._left)
                out.append(b[pos:end])
                self._left -= end - pos
                pos = end
                if not self._left:
                    self._state = _CRLF
            elif state != _DONE:  # a line: the end of a chunk's data, a size, or a trailer
                i = b.find(b"\n", pos)
                if i < 0:
                    if n - pos > 4096:
                        raise h11.RemoteProtocolError("chunk size or trailer line too long")
                    break
                end = i - 1 if i > pos and b[i - 1] == 13 else i
                if state == _SIZE:
                    m = _SIZE_LINE.fullmatch(b, pos, end)
                    if m is None:
                        raise h11.RemoteProtocolError(f"bad chunk size: {bytes(b[pos:i])!r}")
                    self._left = int(m[1], 16)
                    self._state = _DATA if self._left else _TRAILER
                elif state == _CRLF:
                    if end != pos:
                        raise h11.RemoteProtocolError("malformed chunk: no CRLF after its data")
                    self._state = _SIZE
                elif end == pos:  # the blank line after the trailers: the end
                    self._state = _DONE
                pos = i + 1
            else:
                break
        self._buf = b[pos:] if pos < n else b""
        if self._state == _DONE:
            self.done = True
            self.leftover, self._buf = self._buf, b""
        return out[0] if len(out) == 1 else b"".join(out)


@dataclass(slots=True)
class _Conn:
    # receive_some: bytes | bytearray; h11's receive_data, typed bytes, takes both.
    stream: trio.abc.Stream
    socket: trio.socket.SocketType
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0
    reused: bool = False

    def close(self) -> None:
        """Close now, no await: safe in `finally` under cancellation (for TLS this skips
        close_notify, as `trio.aclose_forcefully` would)."""
        self.socket.close()


class H11Response:
    """Status, headers (names lower-cased) and the body, read once: as lines
    (`aiter_lines`) or whole up to a cap (`read`). `complete`: read to its end, clean."""

    __slots__ = ("_chunked", "_conn", "_early", "complete", "headers", "status")

    def __init__(self, conn: _Conn, head: h11.Response, early: bytes) -> None:
        self._conn = conn
        self.status: int = head.status_code
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
        self.complete = False
        self._chunked: ChunkedDecoder | None = None
        self._early: bytes | bytearray = b""  # decoded body that came with the head
        te = self.headers.get("transfer-encoding", "")
        if self.status not in (204, 304) and te.strip().lower() == "chunked":
            self._chunked = dec = ChunkedDecoder()  # (h11 accepts no other coding)
            self._early = dec.feed(early)
            if dec.done:
                self._end_chunked(dec)
        elif early:  # (b"" would tell h11 the connection closed)
            conn.h11.receive_data(early)

    async def _piece(self) -> bytes | bytearray | None:
        """The next piece of the body (maybe empty); None at its end."""
        dec = self._chunked
        try:
            if dec is not None:
                if self._early:
                    piece, self._early = self._early, b""
                    return piece
                if dec.done:
                    return None
                data = await self._conn.stream.receive_some(_RECV)
                if not data:
                    raise h11.RemoteProtocolError("connection closed in the chunked body")
                piece = dec.feed(data)
                if dec.done:
                    self._end_chunked(dec)
                return piece
            while True:
                event = self._conn.h11.next_event()
                if type(event) is h11.Data:
                    return event.data
                if type(event) is h11.EndOfMessage:
                    self.complete = True
                    return None
                if event is not h11.NEED_DATA:
                    raise h11.RemoteProtocolError(f"unexpected {event!r} in the body")
                data = await self._conn.stream.receive_some(_RECV)
                self._conn.h11.receive_data(data)  # type: ignore[arg-type]
        except _BROKEN as exc:
            why = exc.__cause__ or exc  # trio's BrokenResourceError: the OS or TLS error
            raise UpstreamError(f"upstream stream broken: {why!r}", retryable=True) from exc

    def _end_chunked(self, dec: ChunkedDecoder) -> None:
        conn = self._conn.h11
        conn.receive_data(b"0\r\n\r\n")  # the end we decoded, for h11's keep-alive logic
        self.complete = type(conn.next_event()) is h11.EndOfMessage and not dec.leftover

    async def aiter_lines(self) -> AsyncGenerator[str, None]:
        """The body's lines without their endings (see `LineSplitter`)."""
        split = LineSplitter()
        piece = self._piece
        while (data := await piece()) is not None:
            for line in split.feed(data):
                yield line
        tail = split.flush()
        if tail is not None:
            yield tail

    async def read(self, cap: int) -> bytes:
        """The body, or its first `cap` bytes (the rest is left unread)."""
        buf = bytearray()
        while len(buf) < cap and (data := await self._piece()) is not None:
            buf += data
        return bytes(buf[:cap])

    def _finish_buffered(self) -> None:
        """Read on, without I/O, through what h11 holds already (chunked: all decoded)."""
        with contextlib.suppress(h11.ProtocolError):
            while self._chunked is None and not self.complete:
                event = self._conn.h11.next_event()
                self.complete = type(event) is h11.EndOfMessage
                if not self.complete and type(event) is not h11.Data:
                    return


class _StaleConnection(Exception):
    """A reused connection failed before any byte of the response arrived."""


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP stream to ``host``. An IP address is connected to straight away: a
    self-hosted model is often at one, and ``trio.open_tcp_stream`` (name resolution in a
    thread, a task per attempt for happy eyeballs) costs ~2.8 times the CPU of a plain
    connect here, on the event loop, when a burst of turns opens its connections."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def _origin(url: str) -> tuple[Origin, str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"need an http:// or https:// URL, not {url!r}")
    host, default = parts.hostname, (443 if scheme == "https" else 80)
    port = parts.port or default
    host_header = (f"[{host}]" if ":" in host else host) + (f":{port}" if port != default else "")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), target, host_header


class H11Pool:
    """Keep-alive HTTP/1.1 connections per origin. No cap on open connections (one per
    stream in flight); at most `max_idle_per_origin` idle ones are kept."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        max_idle_per_origin: int = 512,
        idle_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_expiry = idle_expiry
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._closed = False

    def idle_count(self) -> int:
        return sum(len(q) for q in self._idle.values())

    @contextlib.asynccontextmanager
    async def stream_post(
        self, url: str, body: Any, headers: Sequence[tuple[str, str]] = ()
    ) -> AsyncIterator[H11Response]:
        """POST `body` as JSON; the response head is read on entering. Leaving the block
        pools the connection if the response was read to its end, else closes it."""
        origin, target, host = _origin(url)
        payload = orjson.dumps(body)
        head = [("Host", host), ("User-Agent", "parley"), ("Accept", "text/event-stream")]
        head += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        request = h11.Request(method="POST", target=target, headers=[*head, *headers])
        conn, resp = await self._send(origin, request, payload)
        try:
            yield resp
        finally:
            self._release(origin, conn, resp)

    async def _send(
        self, origin: Origin, request: h11.Request, payload: bytes
    ) -> tuple[_Conn, H11Response]:
        conn = self._checkout(origin) or await self._connect(origin)
        while True:  # twice at most: a new connection is never stale
            try:
                return conn, await self._exchange(conn, request, payload)
            except _StaleConnection:
                conn.close()
                conn = await self._connect(origin)
            except BaseException:
                conn.close()
                raise

    async def _exchange(self, conn: _Conn, request: h11.Request, payload: bytes) -> H11Response:
        h = conn.h11
        raw = bytearray()
        received = False
        try:
            events = (request, h11.Data(data=payload), h11.EndOfMessage())
            await conn.stream.send_all(b"".join(h.send(e) or b"" for e in events))
            while True:
                m = _HEAD_END.search(raw)
                if m is None:  # h11 is given whole heads only: the body is ours to parse
                    if len(raw) > _MAX_HEAD:
                        raise h11.RemoteProtocolError("response head too large")
                    data = await conn.stream.receive_some(_RECV)
                    if not data:
                        raise h11.RemoteProtocolError("connection closed before the response")
                    received = True
                    raw += data
                    continue
                h.receive_data(bytes(raw[: m.end()]))
                del raw[: m.end()]
                event = h.next_event()
                if type(event) is h11.Response:
                    return H11Response(conn, event, bytes(raw))
                if type(event) is not h11.InformationalResponse:
                    raise h11.RemoteProtocolError(f"{event!r} before the response head")
        except _BROKEN as exc:
            if conn.reused and not received:
                raise _StaleConnection from exc
            why = exc.__cause__ or exc
            raise UpstreamError(f"upstream request failed: {why!r}", retryable=True) from exc

    def _checkout(self, origin: Origin) -> _Conn | None:
        idle = self._idle.setdefault(origin, deque())
        self._expire(idle)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            if not conn.socket.is_readable():  # readable: EOF (server closed it) or junk
                conn.reused = True
                return conn
            conn.close()
        return None

    def _expire(self, idle: deque[_Conn]) -> None:
        oldest_kept = trio.current_time() - self.idle_expiry
        while idle and idle[0].idle_since < oldest_kept:
            idle.popleft().close()

    def _release(self, origin: Origin, conn: _Conn, resp: H11Response) -> None:
        h = conn.h11
        if not resp.complete:
            resp._finish_buffered()
        if resp.complete and h.our_state is h11.DONE and h.their_state is h11.DONE:
            idle = self._idle.setdefault(origin, deque())
            self._expire(idle)
            if len(idle) < self.max_idle_per_origin and not self._closed:
                h.start_next_cycle()
                conn.idle_since = trio.current_time()
                idle.append(conn)
                return
        conn.close()

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await _open_tcp(host, port)
                try:
                    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                    if scheme == "http":
                        return _Conn(tcp, tcp.socket)
                    if self._ssl_context is None:
                        self._ssl_context = ssl.create_default_context()
                    ctx = self._ssl_context
                    tls = trio.SSLStream(tcp, ctx, server_hostname=host, https_compatible=True)
                    await tls.do_handshake()
                    return _Conn(tls, tcp.socket)
                except BaseException:
                    tcp.socket.close()
                    raise
        except _CONNECT_FAILED as exc:
            why = repr(exc.__cause__ or exc)
            if isinstance(exc, trio.TooSlowError):
                why = f"connect timeout after {self.connect_timeout:g}s"
            raise UpstreamError(f"upstream request failed: {why}", retryable=True) from exc

    async def aclose(self) -> None:
        """Close every idle connection; connections in use are closed when released."""
        self._closed = True
        for queue in self._idle.values():
            while queue:
                queue.pop().close()
        await trio.lowlevel.checkpoint()
