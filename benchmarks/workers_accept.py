"""`parley serve --workers N`: how requests spread over the workers of the one shared
listening socket, and what a client sees when a worker is killed -9 under load.

    .venv/bin/python -m benchmarks.workers_accept [--requests 2000] [--concurrency 16]

SQLite + a private redis-server on a free port (never the shared one). Every request is
GET /healthz on a new connection (Connection: close), so each one is a new accept.
Prints one JSON object: per-worker counts, failures, and, for the kill run, how many
requests failed and how long until the restarted worker answered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import trio

from tests.support.cluster import RedisServer, ServerProcess, pids_in
from tests.support.procs import clean_env, free_port


async def one(http: httpx.AsyncClient, url: str) -> int | None:
    try:
        r = await http.get(url, headers={"Connection": "close"})
        return int(r.headers["X-Parley-Worker"]) if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


async def load(
    url: str, requests: int, concurrency: int, kill_at: int | None, server: ServerProcess
) -> dict[str, object]:
    answered: Counter[int] = Counter()
    failed = 0
    done = 0
    killed_at = 0.0
    before = set(pids_in(server.log(), "worker_serving").values())
    first_new: float | None = None
    lock = trio.Lock()
    # no keep-alive: every request is a new connection, a new accept
    http = httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))

    async def worker() -> None:
        nonlocal failed, done, killed_at, first_new
        while True:
            async with lock:
                if done >= requests:
                    return
                done += 1
                n = done
            if kill_at is not None and n == kill_at:
                os.kill(pids_in(server.log(), "worker_serving")[0], signal.SIGKILL)
                killed_at = time.monotonic()
            pid = await one(http, url)
            if pid is None:
                failed += 1
            else:
                answered[pid] += 1
                if pid not in before and first_new is None:
                    first_new = time.monotonic()

    started = time.monotonic()
    async with http, trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    result: dict[str, object] = {
        "requests": requests,
        "failed": failed,
        "per_worker": sorted(answered.values(), reverse=True),
        "requests_per_s": round(requests / (time.monotonic() - started), 1),
    }
    if kill_at is not None:
        result["restarted_worker_answered_after_s"] = (
            round(first_new - killed_at, 2) if first_new else None
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="1: the steady run only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as redis_server:
        env = clean_env() | {"PARLEY_REDIS_URL": redis_server.url}
        server = ServerProcess(free_port(), env, Path(tmp), args=["--workers", str(args.workers)])
        try:
            server.start(60)
            url = f"{server.url}/healthz"
            steady = trio.run(load, url, args.requests, args.concurrency, None, server)
            result = {"workers": args.workers, "steady": steady}
            if args.workers > 1:
                result["kill_one_worker"] = trio.run(
                    load, url, args.requests, args.concurrency, args.requests // 3, server
                )
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
