"""What one server process adds around the app (server/serve.py ``run_worker``): the
``X-Parley-Worker`` header, its own metrics listener, under the supervisor a watch on
the parent, glibc's malloc arenas capped and the cyclic garbage collector tuned."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from typing import Any, cast

import trio
from hypercorn.typing import ASGIFramework
from prometheus_client import CollectorRegistry, start_http_server

from server.logging import get_logger
from server.settings import Settings
from server.ws.asgi import WORKER_HEADER_KEY

__all__ = [
    "GC_THRESHOLDS",
    "MALLOC_ARENAS",
    "WORKER_HEADER",
    "WorkerHeader",
    "collect_garbage_periodically",
    "freeze_startup_objects",
    "limit_malloc_arenas",
    "metrics_port",
    "start_metrics_listener",
    "tune_gc",
    "watch_parent",
]

WORKER_HEADER = b"x-parley-worker"
MALLOC_ARENAS = 2
# The cyclic collector's first generation runs every 50,000 container allocations instead
# of CPython's 700 (the older two keep their ratios, 20 and 10).
GC_THRESHOLDS = (50_000, 20, 10)
# ... and, whatever the allocation rate, the young and middle generations are collected
# every GC_PERIOD seconds and everything every GC_FULL_EVERY-th time
# (collect_garbage_periodically).
GC_PERIOD = 30.0
GC_FULL_EVERY = 4
GC_FULL_EVERY_MAX = 32  # periods: 16 minutes
GC_FULL_WORTH = 1_000  # objects a full collection must free to keep its pace
GC_SLOW = 0.1  # seconds: a collection at least this long is logged
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
log = get_logger("parley")

Scope = dict[str, Any]
Message = dict[str, Any]


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` unless ``MALLOC_ARENA_MAX`` is set (glibc then
    applied that one). Without a cap every thread that allocates (the database and Redis
    threads) may get an arena of its own, up to 8 per core, and memory freed in one is not
    reused by another: the 30-minute soak's RSS grew ~24 MiB an hour with glibc's default
    and levelled off after ~17 minutes with 2 (benchmarks/README.md, "Third session"). True
    when the cap was applied; False on another libc or with the variable set. Call it
    before the process starts threads: arenas that exist stay."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)  # glibc only (not musl)
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, n))


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """A server holds many objects that live for seconds: per socket, the Event its writer
    waits on, the cancel scope of each read, the state of a turn. With CPython's default
    thresholds they outlive two young collections, reach the oldest generation, and every
    time those reach a quarter of it the collector walks every object of the process
    (~0.4 s at 2,000 idle sockets, ~0.7 µs an object); at 2,000 sockets pinged every 5 s
    that was over half the process's CPU. Rarer young collections let those objects die
    young (most garbage here is freed by reference counting anyway; a cycle waits at most
    50,000 allocations). Measured in benchmarks/README.md ("Third session")."""
    gc.set_threshold(*thresholds)


def freeze_startup_objects() -> None:
    """After start-up (imports, settings, the app): collect once, then move every object
    that exists into the collector's permanent generation, which it never walks again
    (modules, classes, SQLAlchemy's and pydantic's tables: ~116,000 objects)."""
    gc.collect()
    gc.freeze()


async def collect_garbage_periodically(
    period: float = GC_PERIOD, full_every: int = GC_FULL_EVERY
) -> None:
    """Collect cyclic garbage on a timer, not only on the allocation count. Parley frees
    nearly everything by reference counting, so at :data:`GC_THRESHOLDS` the youngest
    generation fills only every minute or so under a steady chat load and the middle one
    about every 25 minutes; meanwhile every closed connection's object graph (Hypercorn's
    protocol objects, h11/wsproto state, trio's socket and locks: cycles) and SQLAlchemy's
    per-call statement objects wait, and the heap climbs to that high-water mark (the
    30-minute soak: +15 % RSS, flat only after 24 minutes). Every ``period`` seconds the
    two younger generations are collected (the objects made since the last time), and
    every ``full_every``-th time all of them (every object made after start-up; start-up
    objects are frozen): connections that lived through several collections sit in the
    oldest. A full collection walks every object (~0.3 s at 10,000 idle sockets), so one
    that frees little (fewer than :data:`GC_FULL_WORTH` objects: no churn) doubles the wait
    for the next, up to :data:`GC_FULL_EVERY_MAX` periods; one that frees more brings it
    back to ``full_every``. Measured: benchmarks/README.md, "Fourth session"."""
    every, n = full_every, 0
    while True:
        await trio.sleep(period)
        n += 1
        generation = 2 if n >= every else 1
        t0 = time.perf_counter()
        freed = gc.collect(generation)
        took = time.perf_counter() - t0
        if generation == 2:
            n = 0
            every = full_every if freed >= GC_FULL_WORTH else min(every * 2, GC_FULL_EVERY_MAX)
        if took >= GC_SLOW:
            log.info(
                "gc_collection_slow", generation=generation, ms=round(took * 1000, 1), freed=freed
            )


class WorkerHeader:
    """ASGI middleware: every HTTP response (and WebSocket handshake answer) names the
    process that made it, ``X-Parley-Worker: <pid>`` (a debugging aid with N workers)."""

    def __init__(self, app: Any, ws_app: Any = None) -> None:
        self.app = app
        self.ws_app = ws_app  # WebSockets go straight here; it adds the header on accept
        self.value = str(os.getpid()).encode()
        self.header = (WORKER_HEADER, self.value)

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and self.ws_app is not None:
            # no frame of ours for the socket's life: its answer adds the header itself
            scope[WORKER_HEADER_KEY] = self.header
            return self.ws_app(scope, receive, send)
        if scope["type"] not in ("http", "websocket"):
            return self.app(scope, receive, send)
        return self._wrapped(scope, receive, send)

    async def _wrapped(self, scope: Scope, receive: Any, send: Any) -> None:

        async def send_with_header(message: Message) -> None:
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                headers = list(message.get("headers") or [])
                headers.append(self.header)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def with_worker_header(app: Any) -> ASGIFramework:
    """``app`` behind :class:`WorkerHeader`, typed for Hypercorn's ``serve`` (mode="asgi":
    ``__call__`` is a plain function). WebSockets skip Quart's ``__call__``."""
    return cast("ASGIFramework", WorkerHeader(app, getattr(app, "asgi_app", None)))


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
