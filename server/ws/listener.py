"""The listening socket, made by us so that every accepted connection inherits
keepalive and ``TCP_USER_TIMEOUT``: a peer that stops acknowledging data frees
its writer within seconds instead of the kernel's default quarter of an hour."""

from __future__ import annotations

import socket

__all__ = ["make_listen_socket"]

USER_TIMEOUT_MS = 20_000


def make_listen_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
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
