"""`parley serve` as a user runs it: the embedded default in an empty folder,
serving /healthz and a streamed answer, and exiting 0 on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.procs import PARLEY, clean_env, free_port
from tests.support.wsclient import Rest, connect


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = clean_env() | {"PARLEY_SIM_TOKENS_PER_SECOND": "500"}
    proc = subprocess.Popen(
        [*PARLEY, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


async def test_serve_embedded_default(
    tmp_path: Path, served: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = served
    async with httpx.AsyncClient() as http:
        with trio.fail_after(30):
            while True:
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, "server exited"
                    await trio.sleep(0.2)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    # the embedded default made its database and development key in ./parley-data
    assert (tmp_path / "parley-data" / "parley.db").exists()
    assert (tmp_path / "parley-data" / "jwt-dev-key").exists()
    rest = Rest(f"http://127.0.0.1:{port}")
    guest = (await rest.call("POST", "/api/v1/auth/guest")).json()
    conv = await rest.conversation(guest["accessToken"])
    async with connect(
        f"ws://127.0.0.1:{port}/ws", guest["accessToken"], origin=f"http://127.0.0.1:{port}"
    ) as ws:
        turn = await ws.turn(conv, "hello")
    assert turn.done is not None and turn.done["data"]["status"] == "completed"
    assert len(turn.text.split()) == 200  # PARLEY_SIM_MAX_TOKENS default
    proc.send_signal(signal.SIGTERM)
    out, _ = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
