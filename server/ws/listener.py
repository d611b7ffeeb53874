"""The listening socket, made by us so that every accepted connection inherits
keepalive and ``TCP_USER_TIMEOUT``: a peer that stops acknowledging data frees
its writer within seconds instead of the kernel's default quarter of an hour.

Its accept queue holds :data:`LISTEN_BACKLOG` connections (the kernel caps it at
``net.core.somaxconn``): a reconnect storm (a restart, a failover behind a proxy) queues
its connects instead of dropping their SYNs, each drop costing that client a 1 s, then
3 s, retransmit. Hypercorn calls ``listen()`` again on the socket it is handed, with its
own ``backlog`` setting (default 100), so :func:`server.serve.hypercorn_config` passes
the same figure."""

from __future__ import annotations

import socket

__all__ = ["LISTEN_BACKLOG", "make_listen_socket"]

USER_TIMEOUT_MS = 20_000
LISTEN_BACKLOG = 2048


def make_listen_socket(host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt, value in (
        (getattr(socket, "TCP_USER_TIMEOUT", None), USER_TIMEOUT_MS),
        (getattr(socket, "TCP_KEEPIDLE", None), 30),
        (getattr(socket, "TCP_KEEPINTVL", None), 10),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    ):
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
