"""Redis commands on the event loop (``store/cache/resp.py``) and what the engine does with
them that the shared behaviour suite (``test_cache_engine.py``) does not reach: a script
the server forgot, a caller cancelled mid-command, many callers on few connections, a
password and a database number, TLS, and URLs this client refuses.

Everything that changes a server's state (SCRIPT FLUSH, a password, TLS) runs on a
private ``redis-server``; the shared one only sees keys under this module's prefix.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from store.cache import CacheError, CacheUnavailable, RedisCacheEngine
from store.cache.resp import CommandPool, RedisUnavailable, ReplyError, pool_options
from tests.support.cluster import RedisServer

pytestmark = pytest.mark.redis

SHARED_URL = "redis://127.0.0.1:6379/0"
PREFIX = f"parley-test:resp:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def shared_pool() -> AsyncIterator[CommandPool]:
    pool = CommandPool(SHARED_URL, max_connections=4, socket_timeout=2.0)
    try:
        yield pool
    finally:
        keys = await pool.execute("KEYS", PREFIX + "*")
        if keys:
            await pool.execute("DEL", *keys)
        await pool.aclose()


@pytest.fixture
def private(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def client_count(port: int, **kwargs: Any) -> int:
    """Clients connected to that server, this check's own connection excluded."""
    with redis.Redis(port=port, socket_timeout=2.0, **kwargs) as client:
        return len(client.client_list()) - 1


async def test_replies_of_each_type_come_back_in_order(shared_pool: CommandPool) -> None:
    k = PREFIX + "types"
    replies = await shared_pool.execute_many(
        [
            ("SET", k, b"\x00bytes\r\n"),
            ("GET", k),
            ("GET", PREFIX + "missing"),
            ("INCRBY", PREFIX + "n", 41),
            ("MGET", k, PREFIX + "missing"),
            ("HSET", k, "f", "v"),  # a string key: WRONGTYPE, in its place
            ("PING",),
        ]
    )
    assert replies[:5] == [b"OK", b"\x00bytes\r\n", None, 41, [b"\x00bytes\r\n", None]]
    assert isinstance(replies[5], ReplyError) and "WRONGTYPE" in str(replies[5])
    assert replies[6] == b"PONG"
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await shared_pool.execute("HSET", k, "f", "v")
    # the connection is still good after an error reply
    assert await shared_pool.execute("GET", k) == b"\x00bytes\r\n"


async def test_many_callers_share_few_connections_without_crossed_replies(
    shared_pool: CommandPool,
) -> None:
    seen: dict[int, object] = {}

    async def one(i: int) -> None:
        await shared_pool.execute("SET", f"{PREFIX}c{i}", str(i))
        seen[i] = await shared_pool.execute("GET", f"{PREFIX}c{i}")

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert seen == {i: str(i).encode() for i in range(200)}
    assert len(shared_pool._idle) <= 4  # max_connections: never more opened at once


async def _fake_redis(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}/0"


async def test_a_command_sent_is_answered_to_a_caller_cancelled_meanwhile() -> None:
    """What Redis did reaches the caller (a presence entry it must undo, say); the
    cancellation comes at its next checkpoint, and the connection stays good."""
    conns: list[trio.SocketStream] = []

    async def slow(stream: trio.SocketStream) -> None:
        conns.append(stream)
        while await stream.receive_some(65536):
            await trio.sleep(0.3)
            await stream.send_all(b":7\r\n")

    async with trio.open_nursery() as nursery:
        pool = CommandPool(await _fake_redis(nursery, slow), socket_timeout=5.0)
        got: list[object] = []
        with trio.move_on_after(0.1) as scope:
            got.append(await pool.execute("INCR", "k"))
            await trio.sleep(5)  # the cancellation lands here
        assert scope.cancelled_caught and got == [7]
        assert await pool.execute("INCR", "k") == 7
        assert len(conns) == 1  # the same connection served both
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_a_batch_cut_half_way_closes_its_connection() -> None:
    """A reply that never comes (timeout): that connection is closed, never handed on."""
    conns: list[trio.SocketStream] = []
    answered, first_closed = trio.Event(), trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        conns.append(stream)
        first = len(conns) == 1
        while data := await stream.receive_some(65536):
            if first:
                continue  # the first connection never answers
            assert b"GET" in data
            answered.set()
            await stream.send_all(b"$5\r\nfresh\r\n")
        if first:
            first_closed.set()  # end of stream: the client closed it

    async with trio.open_nursery() as nursery:
        pool = CommandPool(await _fake_redis(nursery, server), socket_timeout=0.2)
        with trio.fail_after(5), pytest.raises(RedisUnavailable, match="timed out"):
            await pool.execute("GET", "k")
        assert pool._idle == []  # not kept for the next caller
        assert await pool.execute("GET", "k") == b"fresh"
        assert len(conns) == 2 and answered.is_set()
        with trio.fail_after(2):
            await first_closed.wait()
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_replies_that_mean_the_server_cannot_serve_are_unavailable() -> None:
    answers = iter([b"-LOADING Redis is loading the dataset in memory\r\n", b"-NOAUTH x\r\n"])

    async def server(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            await stream.send_all(next(answers, b"-WRONGTYPE Operation against a key\r\n"))

    async with trio.open_nursery() as nursery:
        engine = RedisCacheEngine(await _fake_redis(nursery, server), socket_timeout=2.0)
        for _ in range(2):
            with pytest.raises(CacheUnavailable):
                await engine.get("k")
        with pytest.raises(CacheError, match="WRONGTYPE") as err:
            await engine.get("k")
        assert not isinstance(err.value, CacheUnavailable)  # the caller's mistake
        await engine.aclose()
        nursery.cancel_scope.cancel()


async def test_callers_waiting_for_a_connection_when_the_pool_closes_are_refused() -> None:
    release = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            await release.wait()
            await stream.send_all(b"+PONG\r\n")

    async with trio.open_nursery() as nursery:
        pool = CommandPool(await _fake_redis(nursery, server), max_connections=1)
        outcomes: list[object] = []

        async def call() -> None:
            try:
                outcomes.append(await pool.execute("PING"))
            except RedisUnavailable as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as callers:
            callers.start_soon(call)
            await trio.sleep(0.05)  # the first holds the one connection
            callers.start_soon(call)
            await trio.sleep(0.05)  # the second waits for it
            await pool.aclose()
            release.set()
        assert outcomes[0] == b"PONG"
        assert isinstance(outcomes[1], RedisUnavailable) and "closed" in str(outcomes[1])
        assert await pool.execute_many([]) == []  # nothing to send: no connection needed
        nursery.cancel_scope.cancel()


async def test_a_stalled_server_times_out_and_the_connection_is_dropped() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        pool = CommandPool(await _fake_redis(nursery, silent), socket_timeout=0.2)
        with trio.fail_after(5), pytest.raises(RedisUnavailable, match="timed out"):
            await pool.execute("PING")
        assert pool._idle == []
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_a_server_that_is_not_redis_is_unavailable() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with trio.open_nursery() as nursery:
        engine = RedisCacheEngine(await _fake_redis(nursery, http), socket_timeout=1.0)
        with trio.fail_after(5), pytest.raises(CacheUnavailable):
            await engine.get("k")
        assert await engine.ping() is False
        await engine.aclose()
        nursery.cancel_scope.cancel()


async def test_scripts_run_again_by_source_after_the_server_forgets_them(
    private: RedisServer,
) -> None:
    engine = RedisCacheEngine(private.url, socket_timeout=2.0)
    try:
        assert await engine.hit_rate("rl", 5, 60) == (True, 0.0)
        with redis.Redis(port=private.port) as admin:
            admin.script_flush()
            assert admin.script_exists(engine._incr_window.sha) == [False]
        await engine.set("deny", b"x")
        # one pipeline with a script, a read and the other script: each runs once
        ok, _, values, alive = await engine.hit_rate_and_join(
            "rl", 5, 60, ["deny"], "presence", "conn-1", 30
        )
        assert ok and values == [b"x"] and alive == 1
        assert await engine.incr("rl") == 3  # counted once per call, never twice
        with redis.Redis(port=private.port) as admin:
            assert admin.script_exists(engine._incr_window.sha) == [True]
    finally:
        await engine.aclose()


async def test_a_restarted_server_costs_no_caller_an_error(private: RedisServer) -> None:
    pool = CommandPool(private.url, max_connections=2, socket_timeout=2.0)
    try:
        assert await pool.execute("SET", "k", "v") == b"OK"
        private.restart()
        with trio.fail_after(5):
            await trio.sleep(0.05)  # the closed connection becomes readable
            assert await pool.execute("GET", "k") is None  # a new connection, a new server
    finally:
        await pool.aclose()


async def test_password_and_database_number_from_the_url(tmp_path: Path) -> None:
    with RedisServer(
        tmp_path, args=["--requirepass", "s3cret"], client={"password": "s3cret"}
    ) as srv:
        engine = RedisCacheEngine(f"redis://:s3cret@127.0.0.1:{srv.port}/3", socket_timeout=2.0)
        try:
            await engine.set("k", b"in-db-3")
        finally:
            await engine.aclose()
        with redis.Redis(port=srv.port, password="s3cret", db=3) as admin:
            assert admin.get("k") == b"in-db-3"
        with redis.Redis(port=srv.port, password="s3cret", db=0) as admin:
            assert admin.get("k") is None
        wrong = RedisCacheEngine(f"redis://:nope@127.0.0.1:{srv.port}/0", socket_timeout=2.0)
        try:
            with pytest.raises(CacheUnavailable, match="refused the connection"):
                await wrong.get("k")
            assert await wrong.ping() is False
        finally:
            await wrong.aclose()


async def test_an_acl_user_without_a_password(tmp_path: Path) -> None:
    acl = ["--user", "default", "off", "--user", "app", "on", "nopass", "~*", "&*", "+@all"]
    with RedisServer(tmp_path, args=acl, client={"username": "app"}) as srv:
        engine = RedisCacheEngine(f"redis://app@127.0.0.1:{srv.port}/0", socket_timeout=2.0)
        try:
            await engine.set("k", b"as app")
            with redis.Redis(port=srv.port, username="app") as admin:
                assert admin.get("k") == b"as app"
                assert admin.acl_whoami() == "app"
        finally:
            await engine.aclose()
        anonymous = RedisCacheEngine(f"redis://127.0.0.1:{srv.port}/0", socket_timeout=2.0)
        try:  # the default user is off: NOAUTH, the cache cannot be used
            with pytest.raises(CacheUnavailable, match="NOAUTH"):
                await anonymous.get("k")
        finally:
            await anonymous.aclose()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (Debian: openssl)")
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    subprocess.run(
        [
            "openssl",
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_with_the_servers_certificate_and_refused_without(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = RedisServer(tmp_path).port
    tls_args = [
        *("--port", "0", "--tls-port", str(port)),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    ]
    ping_client = {"ssl": True, "ssl_ca_certs": str(cert)}
    with RedisServer(tmp_path, port, args=tls_args, client=ping_client):
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        engine = RedisCacheEngine(url, socket_timeout=2.0)
        try:
            await engine.set("k", b"over tls")
            assert await engine.get("k") == b"over tls"
            assert await engine.hit_rate("rl", 1, 60) == (True, 0.0)
            for _ in range(20):
                await engine.get("k")
            # kept and reused: one connection served all of it
            assert client_count(port, ssl=True, ssl_ca_certs=str(cert)) == 1
        finally:
            await engine.aclose()
        untrusted = RedisCacheEngine(f"rediss://127.0.0.1:{port}/0", socket_timeout=2.0)
        try:
            with pytest.raises(CacheUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.get("k")
        finally:
            await untrusted.aclose()
        plain = RedisCacheEngine(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0)
        try:
            with trio.fail_after(5), pytest.raises(CacheUnavailable):
                await plain.get("k")
        finally:
            await plain.aclose()


def test_url_options() -> None:
    opts = pool_options("redis://u:p%40ss@db.example:6380/4?socket_timeout=0.25")
    assert (opts["host"], opts["port"], opts["db"]) == ("db.example", 6380, 4)
    assert (opts["username"], opts["password"], opts["ssl"]) == ("u", "p@ss", None)
    assert opts["socket_timeout"] == 0.25
    assert pool_options("redis://localhost")["port"] == 6379
    tls = pool_options("rediss://h/0?ssl_cert_reqs=none")["ssl"]
    assert tls is not None and tls.check_hostname is False
    with pytest.raises(ValueError, match="unsupported Redis URL option"):
        pool_options("redis://h/0?decode_responses=true")
    with pytest.raises(ValueError, match="rediss://"):
        pool_options("redis://h/0?ssl_cert_reqs=none")
    with pytest.raises(ValueError, match="unix://"):
        pool_options("unix:///run/redis.sock")
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        pool_options("rediss://h/0?ssl_cert_reqs=maybe")
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        pool_options("rediss://h/0?ssl_cert_reqs=NONE")  # redis-py (subscriptions) refuses it
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="socket_timeout must be"):
            pool_options(f"redis://h/0?socket_timeout={bad}")
    assert CommandPool("redis://app@h/0")._hello == [("AUTH", "app", "")]
    assert CommandPool("redis://:pw@h/0")._hello == [("AUTH", "pw")]
    assert CommandPool("redis://app:pw@h/5")._hello == [("AUTH", "app", "pw"), ("SELECT", 5)]
    with pytest.raises(ValueError, match="max_connections must be >= 1"):
        RedisCacheEngine("redis://h/0", max_connections=0)
    engine = RedisCacheEngine("redis://h/0?socket_connect_timeout=0.25", socket_timeout=3.0)
    assert engine._pool.connect_timeout == 0.25 and engine.socket_timeout == 3.0
    assert RedisCacheEngine("redis://h/0", socket_timeout=3.0)._pool.connect_timeout == 3.0
