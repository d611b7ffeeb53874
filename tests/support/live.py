"""A real Parley server (Hypercorn, trio worker) on an ephemeral port, in a thread.

Tests talk to it over real sockets: httpx for REST, trio-websocket for /ws.
One server per test module keeps the suite fast; each test makes its own users.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.trio import serve as hypercorn_serve

from server.app import create_app
from server.auth.passwords import PasswordService
from server.serve import hypercorn_config
from server.services import Services, build_services
from server.settings import Settings
from server.ws.connection import WsConfig
from server.ws.listener import make_listen_socket

__all__ = ["LiveServer"]


@dataclass
class LiveServer:
    settings: Settings
    passwords: PasswordService
    ws_config: WsConfig = field(default_factory=WsConfig)
    upstream: Any = None
    port: int = 0
    svc: Services | None = None
    _thread: threading.Thread | None = None
    _token: trio.lowlevel.TrioToken | None = None
    _stop: trio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _drain: Any = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> LiveServer:
        sock = make_listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.settings = self.settings.model_copy(update={"port": self.port})

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self.svc = build_services(self.settings, passwords=self.passwords)
            app = create_app(self.svc, upstream=self.upstream, ws_config=self.ws_config)
            self._drain = app.config["PARLEY_DRAIN"]
            cfg = hypercorn_config(self.settings, sock)
            cfg.graceful_timeout = 1.0
            self._ready.set()
            await hypercorn_serve(app, cfg, shutdown_trigger=self._stop.wait)

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as exc:
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"parley-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("server failed to start") from self._error
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a sync function inside the server's trio thread."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def run_async(self, fn: Any, *args: Any) -> Any:
        """Run an async function inside the server's trio thread (blocking; from a thread)."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def drain(self) -> None:
        """Run the SIGTERM drain sequence inside the server (blocking; call from a thread)."""
        assert self._token is not None
        trio.from_thread.run(self._drain, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(30)
        if self._error is not None and not isinstance(self._error, KeyboardInterrupt):
            raise RuntimeError("server thread failed") from self._error
