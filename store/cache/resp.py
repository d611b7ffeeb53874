"""Redis commands on the event loop: trio sockets, hiredis to encode and parse, a small pool.

redis-py's sync client through a worker thread cost 117-128 µs of CPU a GET on this box,
40-46 on the calling thread (``benchmarks/results/setup_stages.json``: the rest is the hop
and the two threads' turns at the GIL); every sign-up, connect, close and ``chat.send``
makes one such call. Here a command is a ``send_all`` and a ``receive_some`` on the event
loop's thread (a GET 60 µs, a connect's cache call 234 → 86), and hiredis (Redis's own C
parser, sans-I/O: ``feed`` bytes, ``gets`` replies) does the protocol.

* :meth:`CommandPool.execute_many` sends a batch of commands in one write and reads one
  reply each (a pipeline: one round trip). A Redis error reply is returned in place, as a
  ``hiredis.ReplyError``, so the caller decides (a script missing from the server's cache
  is run again as ``EVAL``); :meth:`execute` raises it.
* At most ``max_connections`` commands are in flight; each holds one connection.
  Connections are kept and reused (last in, first out). One that is readable while idle
  (the server closed it, or sent something unasked) is dropped at checkout and a new one
  made, so a restarted server costs nobody an error.
* Every batch is bounded by ``socket_timeout`` and a new connection by ``connect_timeout``
  (:class:`RedisUnavailable` when they run out). Once a batch is sent, its replies are
  read even if the caller is cancelled meanwhile (within the same timeout), so a caller
  always learns what Redis did; a batch that fails, or is cancelled before it is sent,
  closes its connection: nothing half-read is ever handed to the next caller.
* ``redis://`` and ``rediss://`` (TLS through ``trio.SSLStream``; ``ssl_cert_reqs``,
  ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname`` from the
  URL's query, as redis-py reads them), user name, password and database from the URL.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Sequence
from typing import Any, NoReturn, cast

import hiredis
import trio
from redis.connection import SSLConnection, parse_url

__all__ = ["CommandPool", "RedisUnavailable", "ReplyError", "pool_options"]

ReplyError = hiredis.ReplyError

Arg = str | bytes | int | float
Command = Sequence[Arg]

_READ = 65536
_SSL_OPTIONS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_TIMEOUTS = ("socket_timeout", "socket_connect_timeout")
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _pack(commands: Sequence[Command]) -> bytes:
    """Commands in Redis's wire format, one after the other (hiredis encodes)."""
    return b"".join(hiredis.pack_command(cast(Any, tuple(c))) for c in commands)


class RedisUnavailable(Exception):
    """No answer: refused, reset, closed, timed out, or not Redis's protocol."""


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def pool_options(url: str) -> dict[str, Any]:
    """What a URL says: host, port, db, username, password, ``ssl`` (a context or None),
    and the timeouts it sets (``socket_timeout``/``socket_connect_timeout``). Raises
    ValueError for a scheme or an option this client does not serve."""
    opts = parse_url(url)
    if "path" in opts:
        raise ValueError("unix:// Redis URLs are not supported: use redis:// or rediss://")
    tls = opts.pop("connection_class", None) is SSLConnection
    known = {"host", "port", "db", "username", "password", *_TIMEOUTS, *_SSL_OPTIONS}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"unsupported Redis URL option(s): {', '.join(unknown)}")
    for name in _TIMEOUTS:
        if name in opts and not (math.isfinite(opts[name]) and opts[name] > 0):
            raise ValueError(f"{name} must be a number of seconds above 0")
    context: ssl.SSLContext | None = None
    if tls:
        # read as redis-py reads them (its subscriptions use the same URL): case and all
        reqs = str(opts.pop("ssl_cert_reqs", "required"))
        if reqs not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {sorted(_CERT_REQS)}")
        try:  # a missing or unreadable file: a clear error at start, not at first use
            context = ssl.create_default_context()  # the system's CAs, and the URL's
            cafile = opts.pop("ssl_ca_certs", None)
            if cafile:
                context.load_verify_locations(cafile)
            certfile = opts.pop("ssl_certfile", None)
            if certfile:
                context.load_cert_chain(certfile, opts.pop("ssl_keyfile", None))
        except OSError as exc:  # ssl.SSLError is one too
            raise ValueError(f"the rediss:// URL's certificate files: {exc}") from exc
        check = _flag(opts.pop("ssl_check_hostname", True))
        context.check_hostname = check and _CERT_REQS[reqs] != ssl.CERT_NONE
        context.verify_mode = _CERT_REQS[reqs]
    elif any(k in opts for k in _SSL_OPTIONS):
        raise ValueError("ssl_* options need a rediss:// URL")
    return {
        "host": opts.get("host") or "localhost",
        "port": int(opts.get("port") or 6379),
        "db": int(opts.get("db") or 0),
        "username": opts.get("username"),
        "password": opts.get("password"),
        "ssl": context,
        **{k: float(opts[k]) for k in _TIMEOUTS if k in opts},
    }


class _Connection:
    __slots__ = ("reader", "stream", "tcp")

    def __init__(self, stream: trio.abc.Stream, tcp: trio.SocketStream) -> None:
        self.stream = stream
        self.tcp = tcp
        self.reader = hiredis.Reader()

    def stale(self) -> bool:
        """Readable while nobody waits for a reply: closed by the server, or garbage."""
        return self.tcp.socket.is_readable()

    async def roundtrip(self, payload: bytes, n: int) -> list[Any]:
        await self.stream.send_all(payload)
        return await self.read(n)

    async def read(self, n: int) -> list[Any]:
        replies: list[Any] = []
        reader = self.reader
        while True:
            reply = reader.gets()
            while reply is not False:
                replies.append(reply)
                if len(replies) == n:
                    return replies
                reply = reader.gets()
            data = await self.stream.receive_some(_READ)
            if not data:
                raise RedisUnavailable("connection closed by the server")
            reader.feed(cast(bytes, data))


class CommandPool:
    """Connections to one Redis server, for commands (not for pub/sub)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 16,
        socket_timeout: float = 1.5,
        connect_timeout: float | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        opts = pool_options(url)
        self.host: str = opts["host"]
        self.port: int = opts["port"]
        self.socket_timeout: float = opts.get("socket_timeout", socket_timeout)
        self.connect_timeout: float = opts.get(
            "socket_connect_timeout",
            self.socket_timeout if connect_timeout is None else connect_timeout,
        )
        self._ssl: ssl.SSLContext | None = opts["ssl"]
        self._hello: list[Command] = []
        user, password = opts["username"], opts["password"]
        if user is not None:  # an ACL user, with or without a password (as redis-py sends it)
            self._hello.append(("AUTH", user, password or ""))
        elif password is not None:
            self._hello.append(("AUTH", password))
        if opts["db"]:
            self._hello.append(("SELECT", opts["db"]))
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    # -- commands --------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        """One command; a Redis error reply is raised (``ReplyError``)."""
        (reply,) = await self.execute_many((args,))
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        """Commands in one round trip; one reply each, error replies in place.

        Once the batch is sent, its replies are read even if the caller is cancelled
        meanwhile (shielded, within the same timeout): what Redis did is returned, and
        the cancellation reaches the caller at its next checkpoint. A caller that cleans
        up after a write (a presence entry) thus always learns the write happened."""
        if not commands:
            return []
        payload = _pack(commands)
        async with self._slots:
            if self._closed:
                raise RedisUnavailable("the Redis client is closed")
            conn = await self._checkout()
            deadline = trio.current_time() + self.socket_timeout
            try:
                with trio.fail_at(deadline):
                    await conn.stream.send_all(payload)
                with trio.CancelScope(shield=True), trio.fail_at(deadline):
                    replies = await conn.read(len(commands))
            except BaseException as exc:
                await trio.aclose_forcefully(conn.stream)
                _reraise(exc, "command")
            if self._closed:
                await trio.aclose_forcefully(conn.stream)
            else:
                self._idle.append(conn)
            return replies

    # -- connections -----------------------------------------------------------------

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale():
                return conn
            await trio.aclose_forcefully(conn.stream)
        try:
            with trio.fail_after(self.connect_timeout):
                return await self._connect()
        except BaseException as exc:
            _reraise(exc, "connect")

    async def _connect(self) -> _Connection:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        stream: trio.abc.Stream = tcp
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ssl is not None:
                tls = trio.SSLStream(tcp, self._ssl, server_hostname=self.host)
                stream = tls
                await tls.do_handshake()
            conn = _Connection(stream, tcp)
            if self._hello:
                payload = _pack(self._hello)
                for reply in await conn.roundtrip(payload, len(self._hello)):
                    if isinstance(reply, ReplyError):  # a wrong password, a missing db
                        raise RedisUnavailable(f"Redis refused the connection: {reply}")
            return conn
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def aclose(self) -> None:
        """Close the kept connections; those in use close when their command ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


def _reraise(exc: BaseException, what: str) -> NoReturn:
    """Cancellation as it is; what can go wrong on the way as :class:`RedisUnavailable`."""
    if isinstance(exc, RedisUnavailable):
        raise exc
    if isinstance(exc, trio.TooSlowError):
        raise RedisUnavailable(f"Redis {what} timed out") from exc
    if isinstance(
        exc,
        OSError | trio.BrokenResourceError | trio.ClosedResourceError | hiredis.ProtocolError,
    ):
        cause = exc.__cause__ or exc  # trio's BrokenResourceError wraps the SSL or OS error
        raise RedisUnavailable(f"Redis {what} failed: {cause!r}") from exc
    raise exc
