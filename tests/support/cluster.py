"""Real `parley serve` processes for multi-instance and chaos tests, and a test-owned
redis-server (never the shared one on 6379).

    with RedisServer(tmp_path) as redis, Cluster(2, database_url=url,
                                                 redis_url=redis.url, workdir=tmp_path) as c:
        c.url(0), c.ws_url(1)            # the instances, each on its own port
        c.kill9(0); c.start(0)           # same port again; start() waits for /readyz 200
        assert c.term(1) == 0            # SIGTERM, wait, the exit code
        redis.kill9(); redis.start()     # same port again

Every instance is ``python -m server.cli serve --port P`` (PARLEY_ENV=test, the same
database and Redis, fast simulated model settings that ``env`` overrides) with its output
in ``workdir/instance-<i>.log`` (:meth:`ServerProcess.log`). Leaving the ``with`` block
(also on a failure) stops every instance (SIGTERM, then kill -9 after 35 s) and the Redis.
In an async test, call the blocking methods through ``await c.astart(i)``,
``await c.aterm(i)`` so that the clients' tasks keep running meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
import redis
import trio

from tests.conftest import TEST_JWT_KEYS
from tests.support.procs import PARLEY, clean_env, free_port, free_ports

__all__ = ["FAST_SIM", "Cluster", "RedisServer", "ServerProcess", "pids_in", "server_env"]

#: A simulated model quick enough for tests; override through ``env``.
FAST_SIM = {"PARLEY_SIM_TOKENS_PER_SECOND": "400", "PARLEY_SIM_MAX_TOKENS": "40"}


def server_env(
    database_url: str, redis_url: str, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a test instance: no inherited PARLEY_ setting, then these."""
    values = clean_env()
    values.update(
        {
            "PARLEY_ENV": "test",
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_REDIS_URL": redis_url,
            "PARLEY_JWT_KEYS": TEST_JWT_KEYS,
            # tests come from 127.0.0.1 and name their client address in X-Forwarded-For
            "PARLEY_TRUST_PROXY_HEADERS": "true",
            "PARLEY_WS_UPGRADES_PER_IP_PER_HOUR": "1000000",
            **FAST_SIM,
        }
    )
    values.update(env or {})
    return values


class ServerProcess:
    """One `parley serve` on a fixed port; restartable on the same port."""

    def __init__(
        self,
        port: int,
        env: Mapping[str, str],
        workdir: Path,
        *,
        name: str = "instance",
        args: Iterable[str] = (),
    ) -> None:
        self.port = port
        self.env = dict(env)
        self.workdir = workdir
        self.args = list(args)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything it wrote (stdout and stderr, every start appended)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> None:
        """Start the process (do not wait for it): see :meth:`start`."""
        assert not self.running(), f"{self.url} is already running"
        self._close_log()
        self._log = self.log_path.open("ab")  # a file: a pipe nobody reads would fill up
        self.proc = subprocess.Popen(
            [*PARLEY, "serve", "--port", str(self.port), *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /readyz answers 200; fails with the log's tail if the process exits."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                if not self.running():
                    raise AssertionError(f"{self.url} exited:\n{self.log()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.url} not ready in {timeout} s:\n{self.log()[-3000:]}"
                    )
                time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def term(self, timeout: float = 35.0) -> int:
        """SIGTERM, wait for the exit (kill -9 after ``timeout``), the exit code."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.url} did not exit {timeout} s after SIGTERM") from None
        finally:
            self._close_log()

    def stop(self) -> None:
        """Whatever state it is in: gone afterwards (SIGTERM, then -9)."""
        with contextlib.suppress(AssertionError):
            if self.proc is not None:
                self.term()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Cluster:
    """``size`` independent `parley serve` processes on their own ports, sharing one
    database and one Redis. A context manager: every instance stops when it ends."""

    def __init__(
        self,
        size: int,
        *,
        database_url: str,
        redis_url: str,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.env = server_env(database_url, redis_url, env)
        self.instances = [
            ServerProcess(port, self.env, workdir, name=f"instance-{i}", args=args)
            for i, port in enumerate(free_ports(size))
        ]

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> ServerProcess:
        return self.instances[i]

    def url(self, i: int) -> str:
        return self.instances[i].url

    def ws_url(self, i: int) -> str:
        return self.instances[i].ws_url

    def start_all(self, timeout: float = 60.0) -> None:
        for inst in self.instances:  # start together, then wait for each
            if not inst.running():
                inst.launch()
        for inst in self.instances:
            inst.wait_ready(timeout)

    def start(self, i: int, timeout: float = 30.0) -> None:
        self.instances[i].start(timeout)

    def kill9(self, i: int) -> None:
        self.instances[i].kill9()

    def term(self, i: int, timeout: float = 35.0) -> int:
        return self.instances[i].term(timeout)

    async def astart(self, i: int, timeout: float = 30.0) -> None:
        await trio.to_thread.run_sync(self.start, i, timeout)

    async def aterm(self, i: int, timeout: float = 35.0) -> int:
        return await trio.to_thread.run_sync(self.term, i, timeout)

    def stop_all(self) -> None:
        for inst in self.instances:  # SIGTERM to all first: they drain side by side
            if inst.running():
                assert inst.proc is not None
                inst.proc.send_signal(signal.SIGTERM)
        for inst in self.instances:
            inst.stop()

    def __enter__(self) -> Self:
        try:
            self.start_all()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop_all()


class RedisServer:
    """A test-owned ``redis-server`` on its own port (nothing saved); restartable there."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        args: Iterable[str] = (),
        client: Mapping[str, Any] | None = None,
    ) -> None:
        """``args``: more of ``redis-server``'s options (a password, TLS); ``client``:
        what :meth:`ping`'s redis-py client then needs to get in (password, ssl, ...)."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.args = list(args)
        self.client: dict[str, Any] = dict(client or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING."""
        assert not self.running(), "already running"
        # --dir: nothing is saved, but a stray dump must not land in the current folder
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", str(self.workdir)),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            assert self.running(), f"redis-server on port {self.port} exited"
            assert time.monotonic() < deadline, f"redis-server on {self.port} did not answer"
            time.sleep(0.02)

    def ping(self) -> bool:
        client = redis.Redis(
            port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5, **self.client
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """kill -9, then start again on the same port (empty: nothing was saved)."""
        self.kill9()
        self.start()

    def stop(self) -> None:
        self.kill9()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


def pids_in(log: str, event: str = "worker_started") -> dict[int, int]:
    """``parley serve --workers N``'s log: worker index -> pid of its newest start."""
    found: dict[int, int] = {}
    for line in log.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                found[int(record["worker"])] = int(record["pid"])
    return found
