"""What a guest sign-up and a WebSocket connect cost the server, in CPU.

A fresh `parley serve` per backend (the embedded SQLite, and MariaDB + Redis), the fake
upstream as its model (unused here). After a warm-up, three phases, each measured as the
server process's CPU time (utime + stime, all its threads) over the phase divided by the
number of operations:

- ``signup``: ``--n`` guest sign-ups (``POST /api/v1/auth/guest``), ``--concurrency`` at
  a time;
- ``connect``: ``--n`` WebSocket connects of those guests, each to ``session.ready``
  (upgrade, subprotocol + bearer token check, admission, presence, the first frame), the
  sockets kept open;
- ``close``: the same sockets closed by the client (the server's side of a close).

    .venv/bin/python benchmarks/setup_cost.py                      # both backends
    .venv/bin/python benchmarks/setup_cost.py --backends sqlite --profile /tmp/prof

``--profile DIR`` records py-spy samples of the server for each phase (raw collapsed
stacks; summarise with benchmarks/profile_summary.py). Writes
benchmarks/results/setup_cost.json. Targets (benchmarks/README.md): ≤ 2 ms per sign-up,
≤ 1 ms per connect.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fake_upstream import running_fake_upstream  # noqa: E402
from benchmarks.run import (  # noqa: E402
    PROFILE,
    Server,
    _start_spy,
    _stop_spy,
    cpu_seconds,
    machine,
    memory,
    parley_server,
)

RESULTS = HERE / "results"


async def _signups(url: str, n: int, concurrency: int) -> list[str]:
    tokens: list[str] = []
    limit = trio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def one(i: int) -> None:
            async with limit:
                # a distinct client address per guest (the server trusts X-Forwarded-For here)
                headers = {"X-Forwarded-For": f"10.9.{i // 250}.{i % 250 + 1}"}
                r = await http.post("/api/v1/auth/guest", json={}, headers=headers)
                r.raise_for_status()
                tokens.append(r.json()["accessToken"])

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
    return tokens


async def _hold(
    ws_url: str,
    token: str,
    ready: trio.Semaphore,
    opened: list[WebSocketConnection],
    close: trio.Event,
    limit: trio.Semaphore,
) -> None:
    async with limit:
        ws_cm = open_websocket_url(ws_url, subprotocols=["chat.v1", f"bearer.{token}"])
        ws = await ws_cm.__aenter__()
        hello = orjson.loads(await ws.get_message())
        assert hello["type"] == "session.ready", hello
    opened.append(ws)
    ready.release()
    await close.wait()
    await ws_cm.__aexit__(None, None, None)


async def _phases(server: Server, n: int, concurrency: int, warmup: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ws_url = server.http_url.replace("http://", "ws://") + "/ws"
    await _signups(server.http_url, warmup, concurrency)  # warm: imports, pools, caches

    def measure(label: str) -> tuple[float, Any]:
        spy = _start_spy(server, label)
        return cpu_seconds(server.pid), spy

    def done(label: str, start: tuple[float, Any], t0: float) -> None:
        wall = time.perf_counter() - t0
        _stop_spy(start[1])
        cpu = cpu_seconds(server.pid) - start[0]
        out[label] = {
            "n": n,
            "server_cpu_s": round(cpu, 3),
            "server_cpu_ms_each": round(cpu * 1000 / n, 3),
            "wall_s": round(wall, 3),
            "per_second": round(n / wall, 1),
        }
        print(label, out[label], flush=True)

    start = measure("signup")
    t0 = time.perf_counter()
    tokens = await _signups(server.http_url, n, concurrency)
    done("signup", start, t0)

    ready = trio.Semaphore(0)
    close = trio.Event()
    opened: list[WebSocketConnection] = []
    limit = trio.Semaphore(concurrency)
    async with trio.open_nursery() as nursery:
        start = measure("connect")
        t0 = time.perf_counter()
        for token in tokens:
            nursery.start_soon(_hold, ws_url, token, ready, opened, close, limit)
        for _ in tokens:
            await ready.acquire()
        done("connect", start, t0)
        out["rss_mib_with_sockets_open"] = memory(server.pid)["rss_mib"]
        await trio.sleep(1.0)
        start = measure("close")
        t0 = time.perf_counter()
        close.set()
    await trio.sleep(1.0)  # the server finishes its side of the closes
    done("close", start, t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mysql"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "setup_cost.json")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE["dir"] = str(args.profile)
    result: dict[str, Any] = {
        "command": " ".join(["benchmarks/setup_cost.py", *sys.argv[1:]]),
        "machine": machine(),
        "n": args.n,
        "concurrency": args.concurrency,
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp, running_fake_upstream() as (_, fake):
        for backend in args.backends:
            with parley_server(fake, backend, Path(tmp)) as server:
                print(f"-- {backend}", flush=True)
                result["backends"][backend] = trio.run(
                    _phases, server, args.n, args.concurrency, args.warmup
                )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
