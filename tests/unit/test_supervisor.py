"""server/supervisor.py and server/process.py in process, with tiny child programs for
workers: restart with backoff, giving up, stopping (forwarded SIGTERM, kill -9 past the
deadline, exit codes), the worker header, the metrics port check, the parent watch.
tests/e2e/test_serve_workers.py runs the real thing."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter

from server import process, worker
from server.process import WorkerHeader, metrics_port, start_metrics_listener, watch_parent
from server.settings import Settings
from server.supervisor import FD_ENV, INDEX_ENV, Supervisor, _check_metrics_ports, supervise
from server.ws.asgi import WORKER_HEADER_KEY
from tests.support.procs import free_port_range

# A worker that serves until SIGTERM, then exits 0; one that ignores SIGTERM; one that dies.
# The first two say when their handler is set: a file named by their pid in READY.
READY = Path(tempfile.mkdtemp(prefix="parley-sup-"))
atexit.register(shutil.rmtree, READY, True)
_MARK = f"open({str(READY)!r} + '/' + str(os.getpid()), 'w').close(); "
SERVES = "import os, signal, sys, time; signal.signal(15, lambda *a: sys.exit(0)); "
SERVES += _MARK + "time.sleep(60)"
DEAF = "import os, signal, time; signal.signal(15, signal.SIG_IGN); " + _MARK + "time.sleep(60)"
DIES = "import sys; sys.exit(3)"


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def spawner(*programs: str, then: str = SERVES) -> tuple[Callable[[int], Any], list[int]]:
    """spawn(i): the next of ``programs`` for worker 0 (then ``then``); ``then`` for others."""
    queue = list(programs)
    calls: list[int] = []

    def spawn(i: int) -> subprocess.Popen[bytes]:
        calls.append(i)
        return child(queue.pop(0) if i == 0 and queue else then)

    return spawn, calls


def ready(sup: Supervisor) -> bool:
    """Every worker runs and has set its SIGTERM handler."""
    return all(p is not None and (READY / str(p)).exists() for p in sup.pids())


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(sup.run(install_signals=False)))
    t.start()
    return t, result


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_dead_worker_is_restarted_after_a_backoff_then_all_stop_with_0() -> None:
    spawn, calls = spawner(DIES, DIES)
    sup = Supervisor(2, spawn, backoff_start=0.05, tick=0.01)
    t, result = run_in_thread(sup)
    wait_until(lambda: sup.restarts == 2 and ready(sup))
    time.sleep(0.2)  # the third start of worker 0 serves: no more restarts
    assert sup.restarts == 2 and calls.count(0) == 3 and calls.count(1) == 1
    pids = sup.pids()
    sup.request_stop()
    t.join(15)
    assert result == [0]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_backoff_doubles_while_it_keeps_dying_then_it_gives_up() -> None:
    spawn, calls = spawner(then=DIES)
    sup = Supervisor(1, spawn, backoff_start=0.05, max_quick_failures=4, tick=0.01)
    started = time.monotonic()
    assert sup.run(install_signals=False) == 1
    assert calls == [0, 0, 0, 0]
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # three backoffs, doubling


def test_a_worker_deaf_to_sigterm_is_killed_at_the_deadline_and_the_exit_code_says_so() -> None:
    spawn, _ = spawner(DEAF)
    sup = Supervisor(2, spawn, stop_timeout=0.5, tick=0.01)
    t, result = run_in_thread(sup)
    wait_until(lambda: ready(sup))
    started = time.monotonic()
    sup.request_stop()
    t.join(15)
    assert result == [1]
    assert time.monotonic() - started < 5


def test_sigterm_to_the_supervisor_is_forwarded() -> None:
    spawn, _ = spawner()
    sup = Supervisor(2, spawn, tick=0.01)

    def term_when_ready() -> None:
        try:
            wait_until(lambda: ready(sup))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=term_when_ready, daemon=True)
    timer.start()
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert sup.run() == 0
    finally:
        timer.join(10)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


async def test_worker_header_on_http_and_websocket_answers() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
        else:
            await send({"type": "lifespan.startup.complete"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    wrapped = WorkerHeader(app)
    for kind in ("http", "websocket", "lifespan"):
        await wrapped({"type": kind}, None, send)
    pid = str(os.getpid()).encode()
    assert sent[0]["headers"] == [(b"a", b"1"), (b"x-parley-worker", pid)]
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}
    assert sent[2]["headers"] == [(b"x-parley-worker", pid)]
    assert sent[3] == {"type": "lifespan.startup.complete"}


def test_metrics_ports_are_checked_before_workers_start() -> None:
    assert _check_metrics_ports(Settings(workers=2)) is None  # no base: no listener
    # two free ports outside the ephemeral range, the second taken: an ephemeral port
    # with whatever lay below it let another test's socket take the base now and then
    base = free_port_range(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        port = base + 1
        s = Settings(workers=2, metrics_port_base=base)
        assert metrics_port(s, 1) == port
        problem = _check_metrics_ports(s)
    assert problem is not None
    assert f"metrics port {port} (PARLEY_METRICS_PORT_BASE + 1)" in problem


async def test_a_worker_drains_when_its_parent_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = iter([100, 100, 1])
    monkeypatch.setattr(process.os, "getppid", lambda: next(parents))
    shutdown = trio.Event()
    with trio.fail_after(5):
        await watch_parent(shutdown, period=0.01)
    assert shutdown.is_set()


def test_the_metrics_listener_serves_this_registry_and_a_taken_port_is_logged() -> None:
    registry = CollectorRegistry()
    Counter("parley_probe", "a probe", registry=registry).inc(3)
    base = free_port_range(2)
    settings = Settings(metrics_port_base=base)
    start_metrics_listener(settings, registry, 1)
    text = httpx.get(f"http://127.0.0.1:{base + 1}/metrics", timeout=5).text
    assert "parley_probe_total 3.0" in text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        start_metrics_listener(settings, registry, 0)  # logged, not raised


def test_supervise_refuses_a_taken_metrics_port_and_a_bad_key_ring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = socket.socket()
        assert supervise(Settings(workers=2, metrics_port_base=port), sock) == 2
    assert sock.fileno() == -1  # closed
    assert "PARLEY_METRICS_PORT_BASE + 0" in capsys.readouterr().err
    sock = socket.socket()
    assert supervise(Settings(workers=2, jwt_keys="short", data_dir=tmp_path), sock) == 2
    assert "PARLEY_JWT_KEYS" in capsys.readouterr().err
    assert sock.fileno() == -1


def test_the_worker_entry_refuses_to_run_on_its_own(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FD_ENV, raising=False)
    assert worker.main() == 2
    assert "started by `parley serve --workers N`" in capsys.readouterr().err
    monkeypatch.setenv(FD_ENV, "3")
    monkeypatch.setenv(INDEX_ENV, "0")
    monkeypatch.setenv("PARLEY_PORT", "not a port")
    assert worker.main() == 2
    assert "PARLEY_PORT" in capsys.readouterr().err


def test_workers_leave_running_on_to_the_supervisor() -> None:
    quiet = worker._NoRunningOn()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("hypercorn.error", logging.INFO, "", 0, msg, None, None)

    assert not quiet.filter(record("Running on http://127.0.0.1:8000 (CTRL + C to quit)"))
    assert quiet.filter(record("something else"))


async def test_websockets_skip_the_worker_header_wrapper_and_carry_its_header() -> None:
    # A socket's whole life would otherwise keep the wrapper's frame and closure: it goes
    # straight to the WebSocket app, which adds the header to its accept from the scope.
    seen: list[tuple[str, Any]] = []

    async def app(scope: dict[str, Any], _receive: Any, _send: Any) -> None:
        seen.append(("app", scope["type"]))

    async def ws_app(scope: dict[str, Any], _receive: Any, _send: Any) -> None:
        seen.append(("ws_app", scope[WORKER_HEADER_KEY]))

    wrapped = WorkerHeader(app, ws_app)
    for kind in ("http", "websocket", "lifespan"):
        await wrapped({"type": kind}, None, None)
    pid = str(os.getpid()).encode()
    assert seen == [("app", "http"), ("ws_app", (b"x-parley-worker", pid)), ("app", "lifespan")]
