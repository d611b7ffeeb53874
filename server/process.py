"""What one server process adds around the app (server/serve.py ``run_worker``): the
``X-Parley-Worker`` header, its own metrics listener, and, under the supervisor, a watch
on the parent."""

from __future__ import annotations

import os
from typing import Any, cast

import trio
from hypercorn.typing import ASGIFramework
from prometheus_client import CollectorRegistry, start_http_server

from server.logging import get_logger
from server.settings import Settings

__all__ = [
    "WORKER_HEADER",
    "WorkerHeader",
    "metrics_port",
    "start_metrics_listener",
    "watch_parent",
]

WORKER_HEADER = b"x-parley-worker"
log = get_logger("parley")

Scope = dict[str, Any]
Message = dict[str, Any]


class WorkerHeader:
    """ASGI middleware: every HTTP response (and WebSocket handshake answer) names the
    process that made it, ``X-Parley-Worker: <pid>`` (a debugging aid with N workers)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.value = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                headers = list(message.get("headers") or [])
                headers.append((WORKER_HEADER, self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def with_worker_header(app: Any) -> ASGIFramework:
    """``app`` behind :class:`WorkerHeader`, typed for Hypercorn's ``serve``."""
    return cast("ASGIFramework", WorkerHeader(app))


def metrics_port(settings: Settings, worker: int) -> int:
    """Worker ``i`` serves its own /metrics on ``PARLEY_METRICS_PORT_BASE + i``."""
    return settings.metrics_port_base + worker


def start_metrics_listener(settings: Settings, registry: CollectorRegistry, worker: int) -> None:
    """This process's metrics on their own port (a thread; prometheus-client's server).
    A port that cannot be had is logged, not fatal: serving matters more than metrics."""
    port = metrics_port(settings, worker)
    try:
        start_http_server(port, addr=settings.host, registry=registry)
    except OSError as exc:
        log.error("metrics_port_unavailable", port=port, error=str(exc))
        return
    log.info("metrics_listening", address=f"http://{settings.host}:{port}/metrics")


async def watch_parent(shutdown: trio.Event, *, period: float = 1.0) -> None:
    """A worker whose supervisor is gone (killed with -9) drains and exits by itself."""
    parent = os.getppid()
    while not shutdown.is_set():
        await trio.sleep(period)
        if os.getppid() != parent:
            log.warning("supervisor_gone", parent=parent)
            shutdown.set()
