"""The listening socket keeps its accept queue once Hypercorn serves on it.

Hypercorn calls ``listen()`` again on a socket handed to it, with its own ``backlog``
setting (default 100), which silently shrank Parley's 2,048: 200 clients reconnecting at
once had SYNs dropped and waited a 1 s (then 3 s) retransmit. The kernel reports a
listening socket's queue bound in ``TCP_INFO`` (``tcpi_sacked``), read here from a
duplicate of the descriptor Hypercorn serves on.
"""

from __future__ import annotations

import os
import socket
import struct
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve

from server.serve import hypercorn_config
from server.settings import Settings
from server.ws.listener import LISTEN_BACKLOG, make_listen_socket

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's (the queue bound is read there)"
)


def _queue_bound(sock: socket.socket) -> int:
    # struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked, sacked;
    # for a listening socket unacked is the accept queue's length and sacked its bound
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("8B6I", info)[13])


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return await stream.receive_some(1024)


def test_the_socket_is_made_with_the_backlog() -> None:
    with make_listen_socket("127.0.0.1", 0) as sock:
        assert _queue_bound(sock) == min(LISTEN_BACKLOG, _somaxconn())
    with make_listen_socket("127.0.0.1", 0, backlog=7) as sock:
        assert _queue_bound(sock) == 7  # the figure read is the one given


async def test_hypercorn_serving_the_socket_keeps_its_backlog() -> None:
    sock = make_listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    cfg = hypercorn_config(Settings(env="test"), sock)  # type: ignore[call-arg]
    fd = int(cfg.bind[0].removeprefix("fd://"))
    probe = socket.socket(fileno=os.dup(fd))  # the same listening socket, our own fd
    with probe:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(hypercorn_serve, _app, cfg, shutdown_trigger=shutdown.wait))
            with trio.fail_after(10):
                answer = await _get(port)  # answered: Hypercorn has listened again
            assert answer.startswith(b"HTTP/1.1 204")
            assert _queue_bound(probe) == min(LISTEN_BACKLOG, _somaxconn())
            shutdown.set()
