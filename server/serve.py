"""Run the server with Hypercorn's trio worker."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from server.logging import configure_logging, get_logger
from server.settings import Settings
from server.ws.listener import LISTEN_BACKLOG, make_listen_socket

__all__ = ["serve"]


def hypercorn_config(settings: Settings, sock: socket.socket | None = None) -> Config:
    """Hypercorn settings; a given listening socket is handed over (Hypercorn closes it)."""
    cfg = Config()
    # detach(): Hypercorn makes its own socket object from the fd and closes it; ours must
    # not close the same number again later (it may belong to a database connection by then)
    cfg.bind = (
        [f"fd://{sock.detach()}"] if sock is not None else [f"{settings.host}:{settings.port}"]
    )
    cfg.worker_class = "trio"
    # Hypercorn listens again on the socket it is given, with this (its default is 100:
    # 200 clients reconnecting at once had SYNs dropped and waited 1-3 s to retransmit)
    cfg.backlog = LISTEN_BACKLOG
    cfg.accesslog = None
    # Hypercorn's own handler on "hypercorn.error" printed each line ("Running on ...") a
    # second time beside the root handler it propagates to; the root one redacts, keep it
    error_log = logging.getLogger("hypercorn.error")
    error_log.handlers.clear()
    error_log.propagate = True
    cfg.errorlog = error_log
    cfg.graceful_timeout = 3.0  # after our own drain (server/drain.py); exit within 30 s
    # Parley sends the pings itself, from the connection sweeper (server/ws/heartbeat.py):
    # Hypercorn's ping task per socket costs four times as much
    cfg.websocket_ping_interval = None
    # Hypercorn counts characters; the server checks the frame bound (UTF-8 bytes) itself
    # and closes 1009 with a reason. 4 x the bound in characters covers every UTF-8 frame.
    cfg.websocket_max_message_size = 4 * settings.ws_max_frame_bytes
    return cfg


# Database and Redis calls run in worker threads. With CPython's default 5 ms switch
# interval a worker waits up to 5 ms for the GIL after every call while the event loop
# is busy streaming, so a transaction of 7 statements could take 35 ms under load.
SWITCH_INTERVAL = 0.0005


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line for a listening socket that cannot be made, naming the setting to change."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"parley serve: {where} is already in use; choose another with --port or PARLEY_PORT"
    if exc.errno == errno.EACCES:
        return (
            f"parley serve: no permission to listen on {where}; "
            "choose a port above 1023 with --port or PARLEY_PORT"
        )
    reason = exc.strerror or str(exc)
    return f"parley serve: cannot listen on {where} ({reason}); check --host or PARLEY_HOST"


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, json=settings.log_json)
    sys.setswitchinterval(SWITCH_INTERVAL)
    log = get_logger("parley")
    if settings.workers > 1 and not settings.redis_url:
        print(
            "parley: --workers > 1 needs PARLEY_REDIS_URL (the in-process cache is per process)",
            file=sys.stderr,
        )
        return 2
    # The address first: a taken port is one line, before any database or key is made.
    try:
        sock = make_listen_socket(settings.host, settings.port)
    except OSError as exc:
        print(bind_error(settings.host, settings.port, exc), file=sys.stderr)
        return 2
    from store.migrate import database_location

    # relative defaults (./parley-data) depend on the folder serve starts in: say which
    log.info(
        "starting",
        database=database_location(settings.database_url),
        dataDir=str(settings.data_dir.resolve()),
    )
    try:
        if settings.is_sqlite:
            from store.migrate import upgrade_to_head

            upgrade_to_head(settings.database_url)
    except BaseException:
        sock.close()
        raise
    if settings.workers > 1:
        from server.supervisor import supervise

        return supervise(settings, sock)
    return run_worker(settings, sock)


def run_worker(settings: Settings, sock: socket.socket, *, worker: int | None = None) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT, then drain. ``worker``: this process's
    index under ``parley serve --workers N`` (server/supervisor.py), None on its own."""
    from server.app import create_app
    from server.process import (
        collect_garbage_periodically,
        freeze_startup_objects,
        limit_malloc_arenas,
        start_metrics_listener,
        tune_gc,
        watch_parent,
        with_worker_header,
    )
    from server.services import build_services

    log = get_logger("parley")
    limit_malloc_arenas()  # before build_services starts the database and cache threads
    tune_gc()

    if worker:  # PARLEY_JOBS_SCHEDULE runs in one process only: worker 0 (or the only one)
        settings = settings.model_copy(update={"jobs_schedule": ""})

    async def main() -> None:
        svc = build_services(settings)
        app = create_app(svc)
        port = sock.getsockname()[1]
        cfg = hypercorn_config(settings, sock)
        freeze_startup_objects()
        stop = trio.Event()
        shutdown = trio.Event()
        if settings.metrics_port_base:
            start_metrics_listener(settings, svc.metrics.registry, worker or 0)

        async def drain_then_stop() -> None:
            await shutdown.wait()
            log.info("shutdown_requested")
            with trio.move_on_after(settings.drain_seconds + 6):
                await app.config["PARLEY_DRAIN"]()
            stop.set()

        async def watch_signals() -> None:
            # Open for the whole run: a second SIGTERM (systemd and the supervisor may both
            # send one) must not reach the default handler, which would kill the drain.
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    shutdown.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            nursery.start_soon(drain_then_stop)
            nursery.start_soon(collect_garbage_periodically)
            if worker is not None:
                nursery.start_soon(watch_parent, shutdown)
                log.info("worker_serving", pid=os.getpid())
            else:
                log.info("serving", address=f"http://{settings.host}:{port}")
            await hypercorn_serve(
                with_worker_header(app), cfg, shutdown_trigger=stop.wait, mode="asgi"
            )
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0
