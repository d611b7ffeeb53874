"""Multi-process WebSocket load generator speaking Parley's real protocol (loopback only).

One *worker* process (``python benchmarks/loadgen.py worker --spec S --out O``)
drives a slice of the clients with trio + trio-websocket:

1. setup: guest users over REST (``POST /api/v1/auth/guest``), one conversation
   per streaming client (``POST /api/v1/conversations``);
2. connect: each client opens a TCP socket from one of several 127.0.0.x source
   addresses, offers subprotocols ``["chat.v1", "bearer.<token>"]`` and waits
   for ``session.ready``; the worker then prints ``READY {json}`` and waits for
   the orchestrator's ``GO <start_ns>`` line on stdin (a barrier across
   processes: every stream starts at the same CLOCK_MONOTONIC instant);
3. run: ``stream`` mode sends ``chat.send`` with a ``[[fake:{...}]]`` prefix
   (tokens, rate, and a ``bench`` id that makes the fake upstream record each
   token's write time) and reads ``chat.ack``, ``chat.stream``* and
   ``chat.done``, recording ``perf_counter_ns()`` at each receipt; optionally
   it disconnects mid-stream and resumes (``chat.resume``) on a new
   connection. ``idle`` mode just holds the authenticated sockets until
   ``STOP``. ``direct`` mode skips Parley and reads the fake upstream's SSE
   itself (the measuring floor: generator + fake upstream only).
4. the worker writes its per-client records to ``--out`` (JSON) and exits.

:func:`run_generator` (used by ``benchmarks/run.py``) splits the clients over
several worker processes, runs the barrier and merges the records;
:func:`analyse` turns records + the fake upstream's traces into figures.

Every phase is bounded by ``timeout_s``; a worker exits on its own even if the
orchestrator vanishes (EOF on stdin counts as STOP).

Standalone use against an already running server and fake upstream::

    python benchmarks/loadgen.py --http-url http://127.0.0.1:8000 \\
        --fake-url http://127.0.0.1:9000 --clients 100 --tokens 100 --tps 20 --procs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fake_upstream import expected_text  # noqa: E402

PERF = time.perf_counter_ns

__all__ = ["analyse", "percentiles", "run_generator"]


# -- helpers shared with run.py ---------------------------------------------------------


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus max and count; empty input gives an empty dict."""
    if not values:
        return {}
    s = sorted(values)
    out: dict[str, float] = {}
    for q in qs:
        k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
        out[f"p{q:g}"] = s[k]
    out["max"] = s[-1]
    out["mean"] = sum(s) / len(s)
    out["n"] = len(s)
    return out


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_000_000
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def source_ips(n: int) -> list[str]:
    """127.0.0.2 .. 127.0.0.(n+1): distinct loopback sources (Linux routes all of 127/8)."""
    return [f"127.0.0.{2 + i}" for i in range(max(1, n))]


# -- the worker (trio) ---------------------------------------------------------------


@dataclass
class _Client:
    index: int
    token: str = ""
    conv_id: str = ""
    src: str = "127.0.0.1"
    ws: Any = None


def _magic(bench: str, tokens: int, tps: float) -> str:
    return "[[fake:" + json.dumps({"tokens": tokens, "tps": tps, "bench": bench}) + "]] " + bench


async def _worker_main(spec: dict[str, Any], out_path: str) -> None:
    import httpx
    import orjson
    import trio
    from trio_websocket import ConnectionClosed, wrap_client_stream

    mode: str = spec["mode"]
    n: int = spec["clients"]
    first: int = spec.get("first_index", 0)
    run_id: str = spec.get("run_id", uuid.uuid4().hex[:8])
    timeout_s: float = spec.get("timeout_s", 120.0)
    tokens: int = spec.get("tokens", 20)
    tps: float = spec.get("tps", 20.0)
    per_user: int = max(1, spec.get("conns_per_user", 1))
    srcs: list[str] = spec.get("source_ips") or ["127.0.0.1"]
    resume_every: int = spec.get("resume_every", 0)
    resume_at: int = spec.get("resume_at", 3)
    stagger_ns = int(spec.get("stagger_ms", 0.0) * 1e6)
    conc = trio.CapacityLimiter(spec.get("connect_concurrency", 64))
    http_url: str = spec.get("http_url", "")
    ws_host, ws_port = spec.get("ws_host", "127.0.0.1"), spec.get("ws_port", 0)
    deadline = trio.current_time() + timeout_s
    clients = [_Client(first + i, src=srcs[(first + i) % len(srcs)]) for i in range(n)]
    records: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    frames_in = 0

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def readline() -> str:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        return str(line)

    t_setup = PERF()
    # -- setup over REST -------------------------------------------------------
    if mode != "direct":
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=http_url, timeout=30, limits=limits) as http:

            async def make_user(group: list[_Client]) -> None:
                try:
                    await _make_user(group)
                except httpx.HTTPError as exc:
                    err(f"setup_{type(exc).__name__}")
                    for c in group:
                        c.token = ""

            async def _make_user(group: list[_Client]) -> None:
                async with conc:
                    k = group[0].index
                    hdr = {"X-Forwarded-For": f"10.77.{k % 250}.{k // 250 % 250}"}
                    r = await http.post("/api/v1/auth/guest", json={}, headers=hdr)
                    if r.status_code != 201:
                        err(f"guest_{r.status_code}")
                        return
                    tok = r.json()["accessToken"]
                    for c in group:
                        c.token = tok
                        if mode == "stream":
                            r = await http.post(
                                "/api/v1/conversations",
                                json={"title": f"bench {c.index}"},
                                headers={"Authorization": f"Bearer {tok}"},
                            )
                            if r.status_code != 201:
                                err(f"conversation_{r.status_code}")
                                c.token = ""
                                continue
                            c.conv_id = r.json()["id"]

            with trio.move_on_after(max(1.0, deadline - trio.current_time())):
                async with trio.open_nursery() as nursery:
                    for g in range(0, n, per_user):
                        nursery.start_soon(make_user, clients[g : g + per_user])
    t_connect = PERF()

    async def open_ws(c: _Client, nursery: trio.Nursery) -> Any:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            await sock.bind((c.src, 0))
            await sock.connect((ws_host, ws_port))
        except OSError:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = trio.SocketStream(sock)
        return await wrap_client_stream(
            nursery,
            stream,
            f"{ws_host}:{ws_port}",
            "/ws",
            subprotocols=["chat.v1", f"bearer.{c.token}"],
            message_queue_size=4096,
            max_message_size=1 << 20,
            receive_buffer_size=65536,
        )

    async def recv(ws: Any) -> tuple[int, dict[str, Any]]:
        nonlocal frames_in
        raw = await ws.get_message()
        t = PERF()
        frames_in += 1
        return t, orjson.loads(raw)

    go = trio.Event()
    stop = trio.Event()
    start_ns = 0
    ready = trio.Event()
    connected = 0
    pending = n

    def one_ready() -> None:
        nonlocal pending
        pending -= 1
        if pending <= 0:
            ready.set()

    async def stream_client(c: _Client) -> None:
        nonlocal connected
        rec: dict[str, Any] = {"i": c.index, "bench": f"{run_id}-{c.index}", "ok": False}
        records.append(rec)
        signalled = False

        def mark() -> None:
            nonlocal signalled
            if not signalled:
                signalled = True
                one_ready()

        if not c.token or not c.conv_id:
            rec["error"] = "setup"
            mark()
            return
        recv_ns: list[int] = []
        chunks: list[int] = []
        replayed: list[int] = []  # indexes into recv_ns of frames replayed by chat.resume
        parts: list[str] = []
        reordered = 0
        last_chunk = -1
        want_resume = resume_every > 0 and c.index % resume_every == 0
        try:
            async with trio.open_nursery() as nursery:
                async with conc:
                    ws = await open_ws(c, nursery)
                    _, hello = await recv(ws)
                if hello.get("type") != "session.ready":
                    rec["error"] = f"hello:{hello.get('type')}"
                    mark()
                    await ws.aclose()
                    return
                connected += 1
                mark()
                await go.wait()
                at = start_ns + c.index * stagger_ns
                await trio.sleep(max(0.0, (at - PERF()) / 1e9))
                mid = str(uuid.uuid4())
                rec["send_ns"] = PERF()
                await ws.send_message(
                    orjson.dumps(
                        {
                            "type": "chat.send",
                            "requestId": f"s-{c.index}",
                            "data": {
                                "conversationId": c.conv_id,
                                "messageId": mid,
                                "content": _magic(rec["bench"], tokens, tps),
                            },
                        }
                    ).decode()
                )
                user_seq = None
                in_replay = False
                while True:
                    try:
                        t, f = await recv(ws)
                    except ConnectionClosed as exc:
                        rec["error"] = f"closed:{exc.reason}"
                        break
                    typ = f.get("type")
                    if typ == "chat.ack":
                        rec["ack_ns"] = t
                        user_seq = f["data"].get("userSeq")
                        rec["assistant_id"] = f["data"].get("assistantMessageId")
                    elif typ == "chat.stream":
                        d = f["data"]
                        ch = d["chunk"]
                        if ch <= last_chunk:
                            reordered += 1
                        last_chunk = max(last_chunk, ch)
                        if "first_ns" not in rec:
                            rec["first_ns"] = t
                        recv_ns.append(t)
                        chunks.append(ch)
                        if in_replay:
                            replayed.append(len(recv_ns) - 1)
                        parts.append(d["delta"])
                        if want_resume and ch >= resume_at and user_seq is not None:
                            want_resume = False
                            await ws.aclose()
                            rec["resumed_after"] = ch
                            async with conc:
                                ws = await open_ws(c, nursery)
                                await recv(ws)  # session.ready
                            await ws.send_message(
                                orjson.dumps(
                                    {
                                        "type": "chat.resume",
                                        "requestId": f"r-{c.index}",
                                        "data": {
                                            "conversationId": c.conv_id,
                                            "lastMessageSeq": user_seq,
                                            "lastChunk": last_chunk,
                                        },
                                    }
                                ).decode()
                            )
                            in_replay = True
                    elif typ == "chat.message":
                        m = f["data"]
                        if m.get("id") == rec.get("assistant_id"):
                            parts = [m["content"]]  # finished while we were away: whole text
                            rec["status"] = m.get("status")
                            rec["done_ns"] = t
                            rec["whole_message"] = True
                    elif typ == "chat.resumed":
                        in_replay = False
                        rec["resumed"] = f["data"]
                        if not f["data"].get("live") and rec.get("whole_message"):
                            break
                    elif typ == "chat.done":
                        rec["done_ns"] = t
                        rec["status"] = f["data"]["status"]
                        rec["last_chunk"] = f["data"]["lastChunk"]
                        break
                    elif typ == "error":
                        rec["error"] = f["data"].get("code")
                        break
                await ws.aclose()
        except Exception as exc:  # one broken client must not take the worker down
            rec.setdefault("error", type(exc).__name__)
            mark()
        text = "".join(parts)
        expected = expected_text(tokens)
        rec.update(recv_ns=recv_ns, chunk=chunks, replayed=replayed, reordered=reordered)
        rec["text_ok"] = text == expected
        rec["lost"] = _lost_tokens(text, tokens)
        rec["ok"] = rec["text_ok"] and rec.get("status") == "completed" and reordered == 0
        if not rec["ok"] and "error" not in rec:
            rec["error"] = f"status={rec.get('status')} text_ok={rec['text_ok']}"
        if expected and not rec["text_ok"]:
            rec["text_head"] = text[:80]

    async def idle_client(c: _Client) -> None:
        nonlocal connected
        rec: dict[str, Any] = {"i": c.index, "ok": False}
        records.append(rec)
        signalled = False

        def mark() -> None:
            nonlocal signalled
            if not signalled:
                signalled = True
                one_ready()

        if not c.token:
            rec["error"] = "setup"
            mark()
            return
        try:
            async with trio.open_nursery() as nursery:
                async with conc:
                    ws = await open_ws(c, nursery)
                    _, hello = await recv(ws)
                ok = hello.get("type") == "session.ready"
                if ok:
                    connected += 1
                else:
                    rec["error"] = f"hello:{hello.get('type')}"
                mark()
                if ok:
                    await stop.wait()
                    rec["ok"] = not ws.closed
                await ws.aclose()
        except Exception as exc:  # e.g. trio-websocket answering a ping while closing
            rec.setdefault("error", type(exc).__name__)
            mark()

    async def direct_client(c: _Client) -> None:
        """Read the fake upstream directly: what the generator + fake alone measure."""
        nonlocal connected
        rec: dict[str, Any] = {"i": c.index, "bench": f"{run_id}-{c.index}", "ok": False}
        records.append(rec)
        recv_ns: list[int] = []
        chunks: list[int] = []
        parts: list[str] = []
        body = {
            "model": "fake",
            "stream": True,
            "messages": [{"role": "user", "content": _magic(rec["bench"], tokens, tps)}],
        }
        connected += 1
        one_ready()
        await go.wait()
        await trio.sleep(max(0.0, (start_ns - PERF()) / 1e9))
        async with httpx.AsyncClient(timeout=30) as http:
            rec["send_ns"] = PERF()
            async with http.stream(
                "POST", spec["fake_url"] + "/v1/chat/completions", json=body
            ) as r:
                async for line in r.aiter_lines():
                    t = PERF()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = orjson.loads(line[6:])
                    delta = (obj.get("choices") or [{}])[0].get("delta", {}).get("content")
                    if delta:
                        if "first_ns" not in rec:
                            rec["first_ns"] = t
                        recv_ns.append(t)
                        chunks.append(len(chunks))
                        parts.append(delta)
        rec["done_ns"] = PERF()
        text = "".join(parts)
        rec.update(recv_ns=recv_ns, chunk=chunks, replayed=[], reordered=0, status="completed")
        rec["text_ok"] = text == expected_text(tokens)
        rec["lost"] = _lost_tokens(text, tokens)
        rec["ok"] = rec["text_ok"]

    body_fn = {"stream": stream_client, "idle": idle_client, "direct": direct_client}[mode]
    summary: dict[str, Any] = {}
    with trio.move_on_after(max(1.0, deadline - trio.current_time())) as scope:
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(body_fn, c)
            if n == 0:
                ready.set()
            await ready.wait()
            t_ready = PERF()
            summary = {
                "connected": connected,
                "clients": n,
                "errors": errors,
                "setup_s": (t_connect - t_setup) / 1e9,
                "connect_s": (t_ready - t_connect) / 1e9,
            }
            print("READY " + json.dumps(summary), flush=True)
            line = await readline()
            if not line.startswith("GO"):
                stop.set()
                nursery.cancel_scope.cancel()
            else:
                start_ns = int(line.split()[1])
                go.set()
                if mode == "idle":
                    await readline()  # STOP (or EOF)
                    stop.set()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "worker": summary,
        "timed_out": scope.cancelled_caught,
        "errors": errors,
        "frames_in": frames_in,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
        "records": records,
    }
    _write_atomic(out_path, orjson.dumps(out))
    print("DONE", flush=True)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


def _lost_tokens(text: str, n: int) -> int:
    """Tokens of the expected answer not received intact (common-prefix measure)."""
    if n <= 0:
        return 0
    from benchmarks.fake_upstream import token_text

    pos = 0
    for i in range(n):
        t = token_text(i)
        if text.startswith(t, pos):
            pos += len(t)
        else:
            return n - i
    return 0


def worker_cli(argv: list[str]) -> int:
    import trio

    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    _raise_nofile()
    spec = json.loads(Path(a.spec).read_text())
    trio.run(_worker_main, spec, a.out)
    return 0


# -- the orchestrator side (plain sync code) ----------------------------------------


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, max(1, n)))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((start, size))
        start += size
    return out


def run_generator(
    spec: dict[str, Any],
    procs: int,
    workdir: Path,
    *,
    on_ready: Any = None,
    hold: Any = None,
    start_delay_s: float = 0.5,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run ``spec["clients"]`` clients over `procs` worker processes; merged records.

    `on_ready()` is called once every worker reports READY (all connected), just before GO;
    in idle mode `hold()` is called after GO and STOP is sent when it returns.
    """
    total = spec["clients"]
    timeout = timeout_s or spec.get("timeout_s", 120.0)
    workers: list[tuple[subprocess.Popen[str], Path]] = []
    t0 = time.monotonic()
    try:
        for k, (start, size) in enumerate(_split(total, procs)):
            s = dict(spec, clients=size, first_index=start, timeout_s=timeout)
            sp = workdir / f"spec-{k}.json"
            out = workdir / f"out-{k}.json"
            out.unlink(missing_ok=True)
            sp.write_text(json.dumps(s))
            cmd = [sys.executable, str(HERE / "loadgen.py"), "worker", "--spec", str(sp)]
            cmd += ["--out", str(out)]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT)
            )
            workers.append((proc, out))
        ready: list[dict[str, Any]] = []
        for proc, _ in workers:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # bounded: the worker's own timeout prints or exits
            if not line.startswith("READY"):
                raise RuntimeError(f"worker did not get ready: {line!r} rc={proc.poll()}")
            ready.append(json.loads(line[6:]))
        ready_s = time.monotonic() - t0
        if on_ready is not None:
            on_ready()
        start_ns = PERF() + int(start_delay_s * 1e9)
        for proc, _ in workers:
            assert proc.stdin is not None
            proc.stdin.write(f"GO {start_ns}\n")
            proc.stdin.flush()
        if spec["mode"] == "idle":
            if hold is not None:
                hold()
            for proc, _ in workers:
                assert proc.stdin is not None
                proc.stdin.write("STOP\n")
                proc.stdin.flush()
        records: list[dict[str, Any]] = []
        frames_in, cpu_s, timed_out = 0, 0.0, False
        errors: dict[str, int] = {}
        for proc, out in workers:
            try:
                proc.wait(timeout=timeout + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not out.exists():
                raise RuntimeError(f"worker wrote no result (rc={proc.returncode})")
            data = json.loads(out.read_text())
            records += data["records"]
            frames_in += data["frames_in"]
            cpu_s += data["cpu_s"]
            timed_out |= data["timed_out"]
            for k, v in data["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {
            "records": sorted(records, key=lambda r: r["i"]),
            "start_ns": start_ns,
            "ready": ready,
            "ready_s": ready_s,
            "generator_cpu_s": cpu_s,
            "generator_frames_in": frames_in,
            "timed_out": timed_out,
            "setup_errors": errors,
            "procs": len(workers),
        }
    finally:
        for proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def fetch_traces(fake_root: str, clear: bool = True) -> dict[str, Any]:
    url = fake_root.rstrip("/") + "/traces" + ("?clear=1" if clear else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return dict(json.loads(r.read())["traces"])


def analyse(gen: dict[str, Any], traces: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Latency, correctness and frame figures from the records and the fake's traces.

    relay = client receipt time of a frame - upstream write time of the last token the
    frame holds (its ``chunk``); replayed frames (after a resume) are left out.
    """
    recs = gen["records"]
    relay_ms: list[float] = []
    first_ms: list[float] = []  # chat.send sent -> first chat.stream received
    ack_ms: list[float] = []  # chat.send sent -> chat.ack received
    upstream_ms: list[float] = []  # chat.send sent -> fake upstream got the request
    frames = toks = lost = reordered = ok = missing_trace = 0
    for r in recs:
        tr = traces.get(r.get("bench", ""))
        if r.get("ok"):
            ok += 1
        lost += r.get("lost", tokens) if "lost" in r else tokens
        reordered += r.get("reordered", 0)
        send = r.get("send_ns")
        if send is not None and "ack_ns" in r:
            ack_ms.append((r["ack_ns"] - send) / 1e6)
        if send is not None and "first_ns" in r:
            first_ms.append((r["first_ns"] - send) / 1e6)
        if tr is None:
            if "bench" in r:
                missing_trace += 1
            continue
        if send is not None:
            upstream_ms.append((tr["arrival_ns"] - send) / 1e6)
        t_ns = tr["t_ns"]
        skip = set(r.get("replayed", []))
        for k, (t, ch) in enumerate(zip(r.get("recv_ns", []), r.get("chunk", []), strict=True)):
            frames += 1
            if k in skip or ch >= len(t_ns):
                continue
            relay_ms.append((t - t_ns[ch]) / 1e6)
        toks += len(t_ns)
    return {
        "clients": len(recs),
        "ok": ok,
        "lost_tokens": lost,
        "reordered_frames": reordered,
        "missing_traces": missing_trace,
        "resumed_clients": sum(1 for r in recs if "resumed" in r),
        "errors": _count(r.get("error") for r in recs if r.get("error")),
        "tokens_relayed": toks,
        "frames": frames,
        "frames_per_token": frames / toks if toks else None,
        "relay_ms": percentiles(relay_ms),
        "first_token_ms": percentiles(first_ms),
        "ack_ms": percentiles(ack_ms),
        "send_to_upstream_ms": percentiles(upstream_ms),
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        return worker_cli(argv[1:])
    import tempfile

    p = argparse.ArgumentParser(description="Drive an already running Parley server.")
    p.add_argument("--http-url", required=True, help="e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--fake-url", required=True, help="fake upstream root, e.g. http://127.0.0.1:9000"
    )
    p.add_argument("--mode", choices=["stream", "idle", "direct"], default="stream")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--tps", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    host_port = a.http_url.split("//", 1)[1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    if not host.startswith("127.") and host != "localhost":
        p.error("loopback only")
    spec = {
        "mode": a.mode,
        "clients": a.clients,
        "tokens": a.tokens,
        "tps": a.tps,
        "http_url": a.http_url,
        "ws_host": "127.0.0.1" if host == "localhost" else host,
        "ws_port": int(port),
        "fake_url": a.fake_url,
        "source_ips": source_ips(4),
        "timeout_s": a.timeout,
        "run_id": uuid.uuid4().hex[:8],
    }
    with tempfile.TemporaryDirectory(prefix="loadgen-") as d:
        gen = run_generator(spec, a.procs, Path(d))
    res = analyse(gen, fetch_traces(a.fake_url), a.tokens)
    print(json.dumps(res, indent=2))
    return 0 if res["lost_tokens"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
