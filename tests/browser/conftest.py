"""Real Chromium (Debian's /usr/bin/chromium, driven by Playwright for Python) against a
real `parley serve` process on an ephemeral port.

Never a downloaded browser: no `playwright install`. The client is built (web/dist) by
`make web` when missing or stale; axe-core comes from web/node_modules.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "password 123"

# What every browser test server runs with: quick answers, short timeouts, generous
# per-IP limits (every page comes from 127.0.0.1), a low per-user send limit that the
# rate-limit test reaches in a few messages.
BASE_ENV = {
    # the tests' messages use [[sim:...]] prefixes; off by default since issue 12
    "PARLEY_SIM_FAULT_INJECTION": "true",
    "PARLEY_SIM_TOKENS_PER_SECOND": "60",
    "PARLEY_SIM_MAX_TOKENS": "40",
    "PARLEY_UPSTREAM_FIRST_TOKEN_TIMEOUT": "1",
    "PARLEY_UPSTREAM_MAX_RETRIES": "0",
    "PARLEY_SIGNUPS_PER_IP_PER_HOUR": "100000",
    "PARLEY_WS_UPGRADES_PER_IP_PER_HOUR": "100000",
    "PARLEY_LOGIN_FAILURES_PER_IP": "100000",
    "PARLEY_CHAT_SENDS_PER_USER_PER_MINUTE": "8",
    "PARLEY_DUPLICATE_WINDOW_SECONDS": "0",
    "PARLEY_DRAIN_SECONDS": "1",
    "PARLEY_LOG_LEVEL": "WARNING",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True)
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is needed: apt-get install -y chromium")


def _ensure_build() -> None:
    # `make web` rebuilds only when web/dist is missing or older than the sources
    subprocess.run(["make", "-s", "web"], cwd=ROOT, check=True)
    assert (ROOT / "web" / "dist" / "index.html").exists()
    assert AXE.exists(), "axe-core comes from web/node_modules (npm ci)"


@dataclass
class Served:
    """One `parley serve` process; restartable on the same port and data folder."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(self.env)
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
            cwd=self.folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 40
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + self.log_tail())
            time.sleep(0.1)

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # REST helpers for checking what the pages show against what is stored
    def login(self, email: str, password: str = PASSWORD) -> str:
        r = httpx.post(f"{self.url}/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["accessToken"])

    def history(self, token: str, conv_id: str, after: int = 0) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.url}/api/v1/conversations/{conv_id}/messages?limit=500&afterSeq={after}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


@pytest.fixture(scope="session")
def browser_ready() -> None:
    _ensure_chromium()
    _ensure_build()


@pytest.fixture(scope="module")
def served(browser_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("served"), dict(BASE_ENV)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(browser_ready: None) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield b
        b.close()


class Pages:
    """New browser contexts (each its own sessionStorage: its own sign-in) with axe-core
    preloaded and every CSP violation or page error collected."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.problems: list[str] = []

    def new(self, **options: Any) -> Any:
        ctx = self.browser.new_context(viewport={"width": 1200, "height": 800}, **options)
        ctx.add_init_script(path=str(AXE))  # injected by the browser, not by the page
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console: {m.text}")
                if "Content Security Policy" in m.text or "Refused to" in m.text
                else None
            ),
        )
        return page

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    p = Pages(browser)
    yield p
    p.close()
    assert not p.problems, p.problems


def new_email() -> str:
    return f"web-{uuid.uuid4().hex[:12]}@example.com"
