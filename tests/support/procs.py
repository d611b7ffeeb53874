"""Helpers for tests that run `parley serve` (and friends) as real processes."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys

__all__ = ["PARLEY", "clean_env", "free_port", "free_port_range", "free_ports"]

#: ``parley`` as a user runs it, from any folder (the project is installed editable).
PARLEY = [sys.executable, "-m", "server.cli"]


def clean_env() -> dict[str, str]:
    """This environment without any ``PARLEY_`` setting (a test's own shell may set some)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` different ports nothing listens on now (all held until all are picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_port_range(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive free ports (``PARLEY_METRICS_PORT_BASE``)."""
    for _ in range(100):
        base = random.randrange(20_000, 30_000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {n} consecutive free ports")
