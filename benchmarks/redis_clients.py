"""Compare three ways of talking to Redis from trio code.

(a) "sync-threads": redis-py's synchronous client, each call run through
    ``trio.to_thread.run_sync(..., limiter=CapacityLimiter(pool_size))``;
    pub/sub on a dedicated thread handing messages to trio.
(b) "asyncio-trio-asyncio": ``redis.asyncio`` driven from trio through
    ``trio_asyncio.open_loop()`` + ``aio_as_trio``.
(c) "trio-native": ``store.cache.resp.CommandPool``, commands on trio sockets with
    hiredis, no thread (Parley's command path since step 16; pub/sub stays on (a)).

Measured for each: sequential SET+GET ops/s, concurrent ops/s with N trio
tasks, pipelined batches of 20 SETs per round trip, and publish->receive
latency (p50/p99).

Usage::

    python benchmarks/redis_clients.py --ops 5000 [--url redis://127.0.0.1:6379/0]

Every key lives under a unique prefix and is deleted at the end; nothing is
flushed. Each phase is bounded by a deadline so a stalled Redis cannot hang
the run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import trio
import trio_asyncio

from store.cache.resp import CommandPool

RESULTS = Path(__file__).resolve().parent / "results" / "redis_clients.json"
PHASE_DEADLINE_S = 120.0
SMALL_LIMIT = 8


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


def _latency_summary(samples_s: list[float]) -> dict[str, float | int]:
    ms = [x * 1000.0 for x in samples_s]
    return {
        "samples": len(ms),
        "p50_ms": round(_pct(ms, 0.50), 4),
        "p99_ms": round(_pct(ms, 0.99), 4),
        "mean_ms": round(statistics.fmean(ms), 4) if ms else float("nan"),
        "max_ms": round(max(ms), 4) if ms else float("nan"),
    }


async def _timed(fn: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    with trio.fail_after(PHASE_DEADLINE_S):
        t0 = time.perf_counter()
        n = await fn()
        return n, time.perf_counter() - t0


KeyCall = Callable[[str], Awaitable[Any]]


async def _sequential(out: dict[str, Any], set_: KeyCall, get_: KeyCall, p: str, ops: int) -> None:
    """Sequential SET+GET from one task: each op is one command (one round trip)."""

    async def run() -> int:
        n = ops // 2
        for i in range(n):
            await set_(f"{p}seq:{i % 100}")
            await get_(f"{p}seq:{i % 100}")
        return n * 2

    cpu0 = time.process_time()
    n, dt_s = await _timed(run)
    out["sequential_ops_per_s"] = round(n / dt_s, 1)
    out["sequential_cpu_us_per_op"] = round((time.process_time() - cpu0) / n * 1e6, 1)


async def _concurrent(set_: KeyCall, get_: KeyCall, p: str, ops: int, concurrency: int) -> float:
    """`concurrency` trio tasks sharing `ops` SET+GET ops: commands a second."""
    per_task = max(1, ops // (2 * concurrency))

    async def worker(w: int) -> None:
        for i in range(per_task):
            await set_(f"{p}con:{w}:{i % 10}")
            await get_(f"{p}con:{w}:{i % 10}")

    async def run() -> int:
        async with trio.open_nursery() as nursery:
            for w in range(concurrency):
                nursery.start_soon(worker, w)
        return per_task * 2 * concurrency

    n, dt_s = await _timed(run)
    return round(n / dt_s, 1)


# ---------------------------------------------------------------------------
# (a) sync client in threads
# ---------------------------------------------------------------------------


async def bench_sync_threads(
    url: str, prefix: str, ops: int, concurrency: int, batch: int, pubsub_n: int
) -> dict[str, Any]:
    pool = redis.ConnectionPool.from_url(
        url, max_connections=concurrency, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    client = redis.Redis(connection_pool=pool)
    limiter = trio.CapacityLimiter(concurrency)
    p = prefix + "sync:"
    out: dict[str, Any] = {}

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    try:
        await call(client.ping)  # warm one connection

        async def set_(key: str) -> Any:
            return await call(client.set, key, b"v")

        async def get_(key: str) -> Any:
            return await call(client.get, key)

        await _sequential(out, set_, get_, p, ops)
        out["concurrent_ops_per_s"] = await _concurrent(set_, get_, p, ops, concurrency)
        out["concurrency"] = concurrency

        # Same N tasks, but at most `small` threads/connections at once: with
        # the GIL and few cores, fewer threads can beat one thread per task.
        small = min(SMALL_LIMIT, concurrency)
        full_limiter, limiter = limiter, trio.CapacityLimiter(small)
        try:
            out[f"concurrent_ops_per_s_limiter_{small}"] = await _concurrent(
                set_, get_, p, ops, concurrency
            )
        finally:
            limiter = full_limiter

        # Pipelined: `batch` SETs per round trip, the whole pipeline in one thread call.
        def run_batch(r: int) -> None:
            pipe = client.pipeline(transaction=False)
            for j in range(batch):
                pipe.set(f"{p}pipe:{j}", b"v", ex=60)
            pipe.execute()

        async def pipelined() -> int:
            rounds = max(1, ops // batch)
            for r in range(rounds):
                await call(run_batch, r)
            return rounds

        rounds, dt_s = await _timed(pipelined)
        out["pipeline_batch_size"] = batch
        out["pipeline_round_trips_per_s"] = round(rounds / dt_s, 1)
        out["pipeline_sets_per_s"] = round(rounds * batch / dt_s, 1)

        # Pub/sub latency: subscriber thread blocked in get_message, handing
        # each message to trio through a memory channel.
        channel = f"{p}chan"
        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[tuple[bytes, float]](1000)
        stop = threading.Event()
        ready = threading.Event()
        ps = client.pubsub(ignore_subscribe_messages=True)

        def reader() -> None:
            ps.subscribe(channel)
            ready.set()
            while not stop.is_set():
                msg = ps.get_message(timeout=0.2)
                if msg is None or msg.get("type") != "message":
                    continue
                item = (msg["data"], time.perf_counter())
                try:
                    token.run_sync_soon(send.send_nowait, item)
                except trio.RunFinishedError:
                    return

        thread = threading.Thread(target=reader, name="bench-pubsub", daemon=True)
        thread.start()
        try:
            await trio.to_thread.run_sync(ready.wait, 5.0)
            lat: list[float] = []
            with trio.fail_after(PHASE_DEADLINE_S):
                for i in range(pubsub_n):
                    t0 = time.perf_counter()
                    await call(client.publish, channel, str(i).encode())
                    data, _ = await recv.receive()
                    # latency measured at the point trio code holds the message
                    lat.append(time.perf_counter() - t0)
                    assert data == str(i).encode()
            out["pubsub_latency"] = _latency_summary(lat)
        finally:
            stop.set()
            await trio.to_thread.run_sync(thread.join, 2.0)
            ps.close()
    finally:
        keys = await call(lambda: list(client.scan_iter(match=p + "*", count=1000)))
        if keys:
            await call(client.delete, *keys)
        await call(client.close)
        pool.disconnect()
    return out


# ---------------------------------------------------------------------------
# (c) commands on trio sockets with hiredis (store/cache/resp.py, Parley since step 16)
# ---------------------------------------------------------------------------


async def bench_trio_native(
    url: str, prefix: str, ops: int, concurrency: int, batch: int, pubsub_n: int
) -> dict[str, Any]:
    """Commands only: Parley's subscriptions stay on (a)'s reader thread."""
    pool = CommandPool(url, max_connections=16, socket_timeout=2.0)
    p = prefix + "native:"
    out: dict[str, Any] = {}
    try:
        await pool.execute("PING")

        async def set_(key: str) -> Any:
            return await pool.execute("SET", key, b"v")

        async def get_(key: str) -> Any:
            return await pool.execute("GET", key)

        await _sequential(out, set_, get_, p, ops)
        out["concurrent_ops_per_s"] = await _concurrent(set_, get_, p, ops, concurrency)
        out["concurrency"] = concurrency

        async def pipelined() -> int:
            rounds = max(1, ops // batch)
            for _ in range(rounds):
                await pool.execute_many(
                    [("SET", f"{p}pipe:{j}", b"v", "EX", 60) for j in range(batch)]
                )
            return rounds

        rounds, dt_s = await _timed(pipelined)
        out["pipeline_batch_size"] = batch
        out["pipeline_round_trips_per_s"] = round(rounds / dt_s, 1)
        out["pipeline_sets_per_s"] = round(rounds * batch / dt_s, 1)
    finally:
        keys = await pool.execute("KEYS", p + "*")
        if keys:
            await pool.execute("DEL", *keys)
        await pool.aclose()
    return out


# ---------------------------------------------------------------------------
# (b) redis.asyncio under trio-asyncio
# ---------------------------------------------------------------------------


async def bench_trio_asyncio(
    url: str, prefix: str, ops: int, concurrency: int, batch: int, pubsub_n: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    p = prefix + "aio:"
    aio = trio_asyncio.aio_as_trio
    async with trio_asyncio.open_loop():
        client = aioredis.Redis.from_url(
            url, max_connections=concurrency, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        try:
            await aio(client.ping)()

            async def set_(key: str) -> Any:
                return await aio(client.set)(key, b"v")

            async def get_(key: str) -> Any:
                return await aio(client.get)(key)

            await _sequential(out, set_, get_, p, ops)
            out["concurrent_ops_per_s"] = await _concurrent(set_, get_, p, ops, concurrency)
            out["concurrency"] = concurrency

            async def run_batch() -> None:
                pipe = client.pipeline(transaction=False)
                for j in range(batch):
                    pipe.set(f"{p}pipe:{j}", b"v", ex=60)
                await pipe.execute()

            async def pipelined() -> int:
                rounds = max(1, ops // batch)
                for _ in range(rounds):
                    await aio(run_batch)()
                return rounds

            rounds, dt_s = await _timed(pipelined)
            out["pipeline_batch_size"] = batch
            out["pipeline_round_trips_per_s"] = round(rounds / dt_s, 1)
            out["pipeline_sets_per_s"] = round(rounds * batch / dt_s, 1)

            channel = f"{p}chan"
            ps = client.pubsub(ignore_subscribe_messages=True)
            await aio(ps.subscribe)(channel)
            send, recv = trio.open_memory_channel[bytes](1000)

            async def reader() -> None:
                while True:
                    msg = await aio(ps.get_message)(ignore_subscribe_messages=True, timeout=0.2)
                    if msg is not None and msg.get("type") == "message":
                        await send.send(msg["data"])

            lat: list[float] = []
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    with trio.fail_after(PHASE_DEADLINE_S):
                        for i in range(pubsub_n):
                            t0 = time.perf_counter()
                            await aio(client.publish)(channel, str(i).encode())
                            data = await recv.receive()
                            lat.append(time.perf_counter() - t0)
                            assert data == str(i).encode()
                    nursery.cancel_scope.cancel()
                out["pubsub_latency"] = _latency_summary(lat)
            finally:
                await aio(ps.aclose)()
        finally:

            async def cleanup() -> None:
                keys = [k async for k in client.scan_iter(match=p + "*", count=1000)]
                if keys:
                    await client.delete(*keys)
                await client.aclose()

            await aio(cleanup)()
    return out


# ---------------------------------------------------------------------------


async def bench_sync_baseline(url: str, prefix: str, ops: int) -> dict[str, Any]:
    """Plain sync client on the calling thread: the floor for one connection."""
    client = redis.Redis.from_url(url, socket_timeout=2.0)
    p = prefix + "base:"
    try:
        t0 = time.perf_counter()
        n = ops // 2
        for i in range(n):
            client.set(f"{p}{i % 100}", b"v")
            client.get(f"{p}{i % 100}")
        dt_s = time.perf_counter() - t0
        keys = list(client.scan_iter(match=p + "*", count=1000))
        if keys:
            client.delete(*keys)
        return {"sequential_ops_per_s": round(2 * n / dt_s, 1)}
    finally:
        client.close()


def machine_info(url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "redis_py": redis.__version__,
        "trio": trio.__version__,
        "trio_asyncio": getattr(trio_asyncio, "__version__", "unknown"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import hiredis

        info["hiredis"] = hiredis.__version__
    except ImportError:
        info["hiredis"] = None
    try:
        c = redis.Redis.from_url(url, socket_timeout=2.0)
        info["redis_server"] = c.info("server").get("redis_version")
        c.close()
    except redis.RedisError:
        info["redis_server"] = None
    return info


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench:redis_clients:{uuid.uuid4().hex[:12]}:"
    pubsub_n = max(10, min(args.ops // 5, 2000))
    common = (args.url, prefix, args.ops, args.concurrency, args.batch, pubsub_n)
    results: dict[str, Any] = {}
    benches = {
        "sync_threads": bench_sync_threads,
        "trio_asyncio": bench_trio_asyncio,
        "trio_native": bench_trio_native,
    }
    order = list(benches)
    for rep in range(args.repeat):
        for name in order if rep % 2 == 0 else list(reversed(order)):
            fn = benches[name]
            r = await fn(*common)
            results.setdefault(name, []).append(r)
            print(f"[{rep}] {name}: {json.dumps(r)}", file=sys.stderr)
    results["sync_baseline_no_trio"] = await bench_sync_baseline(args.url, prefix, args.ops)
    return {"prefix_used": prefix, "pubsub_messages": pubsub_n, **results}


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each metric across repeats (p50/p99 too)."""
    agg: dict[str, Any] = {}
    for k in runs[0]:
        if isinstance(runs[0][k], dict):
            agg[k] = {kk: statistics.median(r[k][kk] for r in runs) for kk in runs[0][k]}
        else:
            agg[k] = statistics.median(r[k] for r in runs)
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--ops", type=int, default=5000, help="commands per phase (bounded)")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs; median reported")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not 10 <= args.ops <= 200_000:
        ap.error("--ops must be between 10 and 200000")

    raw = trio.run(amain, args)
    summary = {
        "sync_threads": _best(raw["sync_threads"]),
        "trio_asyncio": _best(raw["trio_asyncio"]),
        "trio_native": _best(raw["trio_native"]),
        "sync_baseline_no_trio": raw["sync_baseline_no_trio"],
    }
    doc = {
        "command": "python benchmarks/redis_clients.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(args.url),
        "params": {
            "url": args.url,
            "ops": args.ops,
            "concurrency": args.concurrency,
            "batch": args.batch,
            "repeat": args.repeat,
            "pubsub_messages": raw["pubsub_messages"],
        },
        "summary_median": summary,
        "runs": {k: raw[k] for k in ("sync_threads", "trio_asyncio", "trio_native")},
        "notes": (
            "ops = Redis commands (SET and GET each count one). sequential = one trio task; "
            "concurrent = N trio tasks sharing one pool of N connections; pipeline = one "
            "round trip of `batch` SETs; pubsub latency = publish call start until trio code "
            "holds the message. sync_baseline_no_trio = plain sync client without trio, "
            "for reference."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary_median"], indent=2))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
