"""What one WebSocket frame, and one relayed token, cost on this stack with nothing of
Parley's: the floor under the per-token targets.

Each case is a server process doing as little as the case allows, driven by a client
process (trio-websocket) on the same box; the figure is the **server's** CPU (user +
system, from ``/proc``) divided by the frames it sent. ``--streams`` sockets each get
``--frames`` frames ``--gap`` seconds apart (the comparison's shape: 200 streams at 50 frames a
second), so every frame also costs the wake-up that paces it, as a relayed token does.

- ``timer_wake``: no sockets; ``--streams`` trio tasks each sleeping ``--gap``, ``--frames``
  times: trio's cost of waking a task (the least a token can cost).
- ``wsproto``: ``trio.serve_tcp`` + wsproto, frames written with ``send_all``: the least a
  WebSocket frame costs on trio, with no ASGI server.
- ``hypercorn``: a raw ASGI callable under Hypercorn's trio worker (what Parley's ``/ws``
  now is, without Parley).
- ``quart``: Quart-trio's ``websocket.send`` under the same Hypercorn (what ``/ws`` was).
- ``relay``: the least a relayed token costs: a feeder process writes one SSE-shaped line
  every ``--gap`` on each of ``--streams`` TCP connections; the server (trio +
  wsproto, no Hypercorn, no HTTP client, no JSON) waits for each line and writes it out as
  one WebSocket frame. One upstream wake + read + one frame written per token.

The idle cases hold ``--idle`` sockets open, each pinged every ``--ping-interval`` seconds
(the client answers with a pong, as browsers do); the figure is the server's CPU over a
``--hold`` divided by the pings sent: what one ping/pong exchange costs.

- ``ping_hypercorn``: Hypercorn's own ping task per socket (``websocket_ping_interval``)
  under a raw ASGI app that only waits: what Parley's ``/ws`` pings cost, without Parley.
- ``ping_wsproto``: trio + wsproto, a ping task per socket and a reader per socket.
- ``ping_sweep``: trio + wsproto, one task pinging every socket in turn each interval
  (a reader per socket still takes the pongs).

The setup cases measure what a guest sign-up and a WebSocket connect cost the server
with nothing of Parley's, through ``benchmarks/setup_cost.py``'s own client and phases
(``--setup-n`` of each, 20 at a time; server CPU per operation):

- ``setup_raw``: a raw ASGI callable under Hypercorn: ``POST`` answered with a small JSON
  body, an upgrade accepted with ``chat.v1`` and answered with one text frame, then held
  until the client closes.

    .venv/bin/python benchmarks/ws_stack.py      # writes benchmarks/results/ws_stack.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import machine  # noqa: E402

RESULTS = HERE / "results"
FRAME = (
    '{"type":"chat.stream","requestId":"r-1","traceId":"0123456789abcdef0123456789abcdef",'
    '"data":{"conversationId":"c","messageId":"m","seq":2,"chunk":1,"delta":" tok42"}}'
)
LINE = b'data: {"choices":[{"delta":{"content":" tok42"}}]}\n\n'
CASES = ("timer_wake", "wsproto", "hypercorn", "quart", "relay")
PING_CASES = ("ping_hypercorn", "ping_wsproto", "ping_sweep")
SETUP_CASES = ("setup_raw",)
ALL_CASES = CASES + PING_CASES + SETUP_CASES
READY = '{"type":"session.ready","data":{}}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- server side


async def _wsproto_accept(stream: trio.SocketStream) -> Any:
    """Read the upgrade request on ``stream`` and accept it with ``chat.v1``: the server's
    ``wsproto.WSConnection``."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive_some(65536))
        for ev in ws.events():
            if isinstance(ev, Request):
                await stream.send_all(ws.send(AcceptConnection(subprotocol="chat.v1")))
                return ws


async def _wsproto_server(port: int, a: argparse.Namespace, feeder: int | None) -> None:
    from wsproto.events import CloseConnection, TextMessage

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _wsproto_accept(stream)
        if feeder is None:
            for _ in range(a.frames):
                await stream.send_all(ws.send(TextMessage(data=FRAME)))
                await trio.sleep(a.gap)
        else:
            up = await trio.open_tcp_stream("127.0.0.1", feeder)
            for _ in range(a.frames):
                line = await up.receive_some(65536)  # one line per wake at this pace
                await stream.send_all(ws.send(TextMessage(data=line.decode())))
            await up.aclose()
        await stream.send_all(ws.send(CloseConnection(code=1000)))
        await stream.aclose()

    await trio.serve_tcp(handler, port, host="127.0.0.1")


async def _ping_server(port: int, a: argparse.Namespace, sweep: bool) -> None:
    """Idle sockets pinged every ``a.ping_interval``: by a task per socket or by one sweep."""
    from wsproto.events import Ping

    held: dict[trio.SocketStream, Any] = {}  # the sweep's sockets and their WSConnection

    async def pinger(stream: trio.SocketStream, ws: Any) -> None:
        while True:
            await trio.sleep(a.ping_interval)
            await stream.send_all(ws.send(Ping()))

    async def handler(stream: trio.SocketStream) -> None:
        ws = await _wsproto_accept(stream)
        async with trio.open_nursery() as n:
            if sweep:
                held[stream] = ws
            else:
                n.start_soon(pinger, stream, ws)
            while data := await stream.receive_some(65536):
                ws.receive_data(data)
                for _ev in ws.events():  # the pongs
                    pass
            held.pop(stream, None)
            n.cancel_scope.cancel()

    async def sweeper() -> None:
        while True:
            await trio.sleep(a.ping_interval)
            for stream, ws in list(held.items()):
                await stream.send_all(ws.send(Ping()))

    async with trio.open_nursery() as n:
        if sweep:
            n.start_soon(sweeper)
        await trio.serve_tcp(handler, port, host="127.0.0.1")


async def _lifespan(receive: Any, send: Any) -> None:
    """ASGI lifespan: nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _idle_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": "chat.v1"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _setup_ws(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": "chat.v1"})
    await send({"type": "websocket.send", "text": READY})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _setup_raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _setup_ws(scope, receive, send)
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"accessToken":"t"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _asgi_app(a: argparse.Namespace) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": "chat.v1"})
        for _ in range(a.frames):
            await send({"type": "websocket.send", "text": FRAME})
            await trio.sleep(a.gap)
        await send({"type": "websocket.close", "code": 1000})

    return app


def _quart_app(a: argparse.Namespace) -> Any:
    from quart import websocket
    from quart_trio import QuartTrio

    app = QuartTrio("ws-stack")

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept(subprotocol="chat.v1")
        for _ in range(a.frames):
            await websocket.send(FRAME)
            await trio.sleep(a.gap)
        await websocket.close(1000)

    return app


def _stdout_to_devnull() -> None:
    """After "ready": nobody reads the pipe any more, and a server that logs to stdout
    (Quart's request lines) would block once it is full."""
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def serve(a: argparse.Namespace) -> None:
    print("ready", flush=True)
    _stdout_to_devnull()
    if a.case in ("wsproto", "relay"):
        trio.run(_wsproto_server, a.port, a, a.feeder if a.case == "relay" else None)
        return
    if a.case in ("ping_wsproto", "ping_sweep"):
        trio.run(_ping_server, a.port, a, a.case == "ping_sweep")
        return
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    cfg = Config()
    cfg.bind = [f"127.0.0.1:{a.port}"]
    cfg.worker_class = "trio"
    cfg.backlog = 2048  # as Parley (server/ws/listener.py); Hypercorn's default is 100
    cfg.accesslog = None
    cfg.websocket_ping_interval = a.ping_interval if a.case == "ping_hypercorn" else 25.0
    app: Any = _idle_asgi_app
    if a.case == "setup_raw":
        app = _setup_raw_app
    elif a.case != "ping_hypercorn":
        app = _asgi_app(a) if a.case == "hypercorn" else _quart_app(a)
    trio.run(hypercorn_serve, app, cfg)


def feed(a: argparse.Namespace) -> None:
    """The relay case's upstream: a line every ``gap`` on each accepted connection."""

    async def handler(stream: trio.SocketStream) -> None:
        for _ in range(a.frames):
            await stream.send_all(LINE)
            await trio.sleep(a.gap)
        await trio.sleep(5)  # let the last line be read before closing
        await stream.aclose()

    async def main() -> None:
        await trio.serve_tcp(handler, a.port, host="127.0.0.1")

    print("ready", flush=True)
    _stdout_to_devnull()
    trio.run(main)


def timer_wake(a: argparse.Namespace) -> dict[str, float]:
    async def one() -> None:
        for _ in range(a.frames):
            await trio.sleep(a.gap)

    async def main() -> None:
        async with trio.open_nursery() as n:
            for _ in range(a.streams):
                n.start_soon(one)

    c0 = time.process_time()
    trio.run(main)
    return {"wakes": a.streams * a.frames, "cpu_s": time.process_time() - c0}


# ---------------------------------------------------------------- client side


async def _client(port: int, streams: int) -> int:
    from trio_websocket import ConnectionClosed, open_websocket_url

    got = 0

    async def one() -> None:
        nonlocal got
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat.v1"]) as ws:
            try:
                while True:
                    await ws.get_message()
                    got += 1
            except ConnectionClosed:
                pass

    async with trio.open_nursery() as n:
        for _ in range(streams):
            n.start_soon(one)
            await trio.sleep(0.002)  # connect gently: the figure is the steady state
    return got


async def _idle_client(port: int, a: argparse.Namespace, server_pid: int) -> dict[str, float]:
    """Open ``a.idle`` sockets (trio-websocket answers each ping with a pong), then read
    the server's CPU over ``a.hold`` seconds of idling."""
    from trio_websocket import open_websocket_url

    connected = 0
    all_in, done = trio.Event(), trio.Event()

    async def one() -> None:
        nonlocal connected
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat.v1"]):
            connected += 1
            if connected == a.idle:
                all_in.set()
            await done.wait()

    out: dict[str, float] = {}
    rss0 = _rss_mib(server_pid)
    async with trio.open_nursery() as n:
        for _ in range(a.idle):
            n.start_soon(one)
            await trio.sleep(0.001)
        await all_in.wait()
        await trio.sleep(a.ping_interval)  # every socket past its first ping
        c0 = _cpu_seconds(server_pid)
        await trio.sleep(a.hold)
        out = {
            "connected": connected,
            "server_cpu_s": _cpu_seconds(server_pid) - c0,
            "rss_kib_per_socket": (_rss_mib(server_pid) - rss0) * 1024 / max(connected, 1),
        }
        done.set()
        n.cancel_scope.cancel()
    return out


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    time.sleep(1.0)  # imports done, listening
    return proc


def run_case(case: str, a: argparse.Namespace) -> dict[str, Any]:
    if case == "timer_wake":
        r = timer_wake(a)
        return {"frames": r["wakes"], "us_per_frame": round(r["cpu_s"] / r["wakes"] * 1e6, 1)}
    common = ["--frames", str(a.frames), "--gap", str(a.gap), "--streams", str(a.streams)]
    common += ["--ping-interval", str(a.ping_interval)]
    if case in PING_CASES:
        port = _free_port()
        server = _start(["--role", "serve", "--case", case, "--port", str(port), *common])
        try:
            r = trio.run(_idle_client, port, a, server.pid)
        finally:
            server.kill()
            server.wait()
        pings = r["connected"] * a.hold / a.ping_interval
        return {
            "sockets": r["connected"],
            "pings": round(pings),
            "us_per_frame": round(r["server_cpu_s"] / pings * 1e6, 1),
            "server_cpu_s": round(r["server_cpu_s"], 2),
            "share_of_a_core": round(r["server_cpu_s"] / a.hold, 3),
            "rss_kib_per_socket": round(r["rss_kib_per_socket"], 1),
        }
    if case in SETUP_CASES:
        return _setup_case(case, a, common)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        feeder = None
        if case == "relay":
            feeder = _free_port()
            procs.append(_start(["--role", "feed", "--port", str(feeder), *common]))
        port = _free_port()
        server_args = ["--role", "serve", "--case", case, "--port", str(port), *common]
        if feeder is not None:
            server_args += ["--feeder", str(feeder)]
        server = _start(server_args)
        procs.append(server)
        c0 = _cpu_seconds(server.pid)
        t0 = time.perf_counter()
        got = trio.run(_client, port, a.streams)
        cpu = _cpu_seconds(server.pid) - c0
        return {
            "frames": got,
            "us_per_frame": round(cpu / max(got, 1) * 1e6, 1),
            "server_cpu_s": round(cpu, 2),
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _setup_case(case: str, a: argparse.Namespace, common: list[str]) -> dict[str, Any]:
    from benchmarks.run import Server
    from benchmarks.setup_cost import _phases

    port = _free_port()
    proc = _start(["--role", "serve", "--case", case, "--port", str(port), *common])
    try:
        server = Server(proc, f"http://127.0.0.1:{port}", port, case)
        r = trio.run(_phases, server, a.setup_n, 20, 20)
    finally:
        proc.kill()
        proc.wait()
    return {
        "signup_ms": r["signup"]["server_cpu_ms_each"],
        "connect_ms": r["connect"]["server_cpu_ms_each"],
        "close_ms": r["close"]["server_cpu_ms_each"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--role", choices=("bench", "serve", "feed"), default="bench")
    p.add_argument("--case", choices=ALL_CASES)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--feeder", type=int, default=0)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--gap", type=float, default=0.02)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--idle", type=int, default=2000, help="idle cases: sockets held")
    p.add_argument("--ping-interval", type=float, default=5.0, help="idle cases: seconds")
    p.add_argument("--hold", type=float, default=20.0, help="idle cases: seconds measured")
    p.add_argument("--setup-n", type=int, default=200, help="setup cases: operations")
    p.add_argument("--only", nargs="+", choices=ALL_CASES, help="cases to run")
    p.add_argument("--out", type=Path, default=RESULTS / "ws_stack.json")
    a = p.parse_args()
    if a.role == "serve":
        serve(a)
        return 0
    if a.role == "feed":
        feed(a)
        return 0
    cases: dict[str, Any] = {}
    if a.only and a.out.exists():  # a partial run keeps the other cases' figures
        cases = json.loads(a.out.read_text()).get("cases", {})
    for case in a.only or ALL_CASES:
        runs = [run_case(case, a) for _ in range(a.repeat)]
        if case in SETUP_CASES:
            cases[case] = {"runs": runs}
            for key in ("signup_ms", "connect_ms", "close_ms"):
                vals = sorted(r[key] for r in runs)
                cases[case][key + "_median"] = vals[len(vals) // 2]
            print(case, {k: v for k, v in cases[case].items() if k != "runs"}, flush=True)
            continue
        per = sorted(r["us_per_frame"] for r in runs)
        cases[case] = {"us_per_frame_median": per[len(per) // 2], "runs": runs}
        print(case, per, flush=True)
    result = {
        "command": " ".join(["benchmarks/ws_stack.py", *sys.argv[1:]]),
        "machine": machine(),
        "streams": a.streams,
        "frames_per_stream": a.frames,
        "gap_s": a.gap,
        "idle_sockets": a.idle,
        "ping_interval_s": a.ping_interval,
        "hold_s": a.hold,
        "setup_n": a.setup_n,
        "cases": cases,
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    # the summary: µs per frame for the frame cases, the medians for the setup ones
    summary = {
        k: v.get("us_per_frame_median", {m: x for m, x in v.items() if m.endswith("_median")})
        for k, v in cases.items()
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
