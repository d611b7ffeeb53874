"""``parley serve --workers N``: one listening socket, N server processes.

The parent (this module) binds the socket once (server/serve.py, before migrating), then
starts N fresh interpreters (``python -m server.worker``) that inherit it and accept from
its one queue; the parent itself never accepts. It forwards SIGTERM/SIGINT to the
workers (each drains as a single process does: server/drain.py), waits for them and
kills what is left 28 s after the signal; a worker that dies while the supervisor is not
stopping is started again after a short backoff (0.5 s, doubling up to 10 s while it
keeps dying within 10 s of its start; after 5 such deaths in a row the supervisor gives
up, stops the others and exits 1). Workers run in their own process group, so a
terminal's Ctrl+C reaches the parent only and the workers get exactly one SIGTERM; a
worker whose parent is gone (``kill -9``) drains and exits by itself
(server/process.py ``watch_parent``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from server.logging import get_logger
from server.settings import Settings, SettingsError

__all__ = ["FD_ENV", "INDEX_ENV", "Supervisor", "supervise"]

FD_ENV = "PARLEY_WORKER_FD"
INDEX_ENV = "PARLEY_WORKER_INDEX"
log = get_logger("parley")

Spawn = Callable[[int], "subprocess.Popen[bytes]"]


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None
    quick_failures: int = 0


class Supervisor:
    """Keeps ``count`` workers alive (``spawn(i)`` starts worker i) until a signal, then
    stops them. :meth:`run` returns the exit code: 0 when every worker exited 0."""

    def __init__(
        self,
        count: int,
        spawn: Spawn,
        *,
        stop_timeout: float = 28.0,
        min_uptime: float = 10.0,
        backoff_start: float = 0.5,
        backoff_max: float = 10.0,
        max_quick_failures: int = 5,
        tick: float = 0.1,
    ) -> None:
        self.count = count
        self.spawn = spawn
        self.stop_timeout = stop_timeout
        self.min_uptime = min_uptime
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.max_quick_failures = max_quick_failures
        self.tick = tick
        self.slots = [_Slot() for _ in range(count)]
        self.restarts = 0
        self._requested: int | None = None
        self._wake = threading.Event()

    # -- control (signal handlers, tests) ---------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self._requested is None:
            self._requested = signum
        self._wake.set()

    def pids(self) -> list[int | None]:
        return [s.proc.pid if s.proc is not None else None for s in self.slots]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signum)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, *, install_signals: bool = True) -> int:
        previous: dict[int, Any] = {}
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            for i in range(self.count):
                self._start(i)
            while self._requested is None:
                self._wake.wait(self.tick)
                self._wake.clear()
                if self._requested is not None:
                    break
                if not self._keep_alive():
                    self._stop(signal.SIGTERM)
                    return 1
            log.info("supervisor_stopping", signal=signal.Signals(self._requested).name)
            return self._stop(signal.SIGTERM)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self, i: int) -> None:
        slot = self.slots[i]
        slot.proc = self.spawn(i)
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("worker_started", worker=i, pid=slot.proc.pid)

    def _keep_alive(self) -> bool:
        """Restart dead workers when their backoff is over; False: give up."""
        now = time.monotonic()
        for i, slot in enumerate(self.slots):
            if slot.proc is not None and slot.proc.poll() is not None:
                code = slot.proc.returncode
                lived = now - slot.started
                slot.quick_failures = slot.quick_failures + 1 if lived < self.min_uptime else 0
                if slot.quick_failures >= self.max_quick_failures:
                    log.error("worker_keeps_failing", worker=i, exitCode=code)
                    return False
                delay = min(
                    self.backoff_start * 2 ** max(slot.quick_failures - 1, 0), self.backoff_max
                )
                log.warning(
                    "worker_exited",
                    worker=i,
                    pid=slot.proc.pid,
                    exitCode=code,
                    uptimeSeconds=round(lived, 1),
                    restartInSeconds=delay,
                )
                slot.proc = None
                slot.restart_at = now + delay
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self.restarts += 1
                self._start(i)
        return True

    def _stop(self, signum: int) -> int:
        """SIGTERM every worker, wait for all (up to ``stop_timeout``), SIGKILL the rest."""
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)
        deadline = time.monotonic() + self.stop_timeout
        code = 0
        for i, slot in enumerate(self.slots):
            if slot.proc is None:
                continue
            proc = slot.proc
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", worker=i, pid=proc.pid, afterSeconds=self.stop_timeout)
                proc.kill()
                proc.wait()
            if proc.returncode != 0 and proc in live:
                code = 1
            log.info("worker_stopped", worker=i, pid=proc.pid, exitCode=proc.returncode)
        return code


def _check_metrics_ports(settings: Settings) -> str | None:
    """The per-worker metrics ports, checked before any worker starts: one line if taken."""
    if not settings.metrics_port_base:
        return None
    for i in range(settings.workers):
        port = settings.metrics_port_base + i
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((settings.host, port))
            except OSError as exc:
                return (
                    f"parley serve: metrics port {port} (PARLEY_METRICS_PORT_BASE + {i}) "
                    f"cannot be used ({exc.strerror or exc}); choose another base"
                )
    return None


def supervise(settings: Settings, sock: socket.socket, *, install_signals: bool = True) -> int:
    """Run ``settings.workers`` worker processes on ``sock`` until SIGTERM/SIGINT."""
    problem = _check_metrics_ports(settings)
    if problem:
        sock.close()
        print(problem, file=sys.stderr)
        return 2
    # Made once here: N workers starting together would each make a different dev key.
    try:
        settings.jwt_key_ring()
    except SettingsError as exc:
        sock.close()
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    fd = sock.fileno()
    env = dict(os.environ)
    env.update(
        PARLEY_HOST=settings.host,
        PARLEY_PORT=str(port),  # the real one, also when --port 0 picked it
        PARLEY_WORKERS=str(settings.workers),
        **{FD_ENV: str(fd)},
    )

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "server.worker"],
            env=env | {INDEX_ENV: str(i)},
            pass_fds=(fd,),
            process_group=0,  # the parent alone gets a terminal's Ctrl+C, and forwards it
        )

    address = f"http://{settings.host}:{port}"
    log.info("serving", address=address, workers=settings.workers, pid=os.getpid())
    logging.getLogger("parley.supervisor").info(
        "Running on %s with %d workers (CTRL + C to quit)", address, settings.workers
    )
    try:
        return Supervisor(settings.workers, spawn).run(install_signals=install_signals)
    finally:
        sock.close()
