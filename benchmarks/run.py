"""Benchmark orchestrator: fake upstream + `parley serve` (or the floor) + load generator.

Every server is a real separate process on 127.0.0.1; every load is bounded in
count and time. Results go to ``benchmarks/results/<scenario>.json`` (each with
the exact command that reproduces it) and plots to ``benchmarks/results/*.png``.

    python benchmarks/run.py --quick                  # ~1-2 min, small loads
    python benchmarks/run.py                          # published set (~7 min; +3 with --with-1000)
    python benchmarks/run.py --only comparison relay  # some scenarios
    python benchmarks/run.py --quick --only smoke --results-dir /tmp/x  # what the test runs

Scenarios: ``smoke``, ``relay`` (1/100/500[/1000] streams at 20 tokens/s, Parley and
floor, plus the direct-to-upstream measuring floor), ``comparison`` (200 streams x 200
tokens at 50 tokens/s, fresh server), ``dispatch`` (embedded, MariaDB + Redis, the floor,
and the floor storing each send in MariaDB), ``idle`` (1k/5k/10k authenticated idle
WebSockets on SQLite; 10k without pings, and 10k on MariaDB + Redis), ``workers``
(``parley serve --workers`` 1 and 2 on MariaDB + Redis: the comparison's load and 1,000
streams at 20 tokens/s; not in the default set). A server's
CPU and RSS include its worker processes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fake_upstream import running_fake_upstream  # noqa: E402
from benchmarks.loadgen import analyse, fetch_traces, run_generator, source_ips  # noqa: E402

RESULTS = HERE / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARLEY_BIN = ROOT / ".venv" / "bin" / "parley"
# Sized by measurement (README "Sizing the generator"): a worker spends ~90-100 us of CPU
# per received frame (trio-websocket + orjson), i.e. <= ~10k frames/s with a whole core; on
# the 2-core box it shares the CPU with the server and the fake, so keep ~2k frames/s each.
FRAMES_PER_WORKER = 2000
MAX_WORKERS = 4
#: set by --profile: py-spy samples the server during every stream phase into this directory
PROFILE: dict[str, Any] = {"dir": None, "n": 0}


# -- process probes -------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``parley serve --workers N``: the supervisor and
    its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants, from /proc/<pid>/stat."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{p}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def memory(pid: int) -> dict[str, float]:
    """RSS and peak RSS (MiB), summed over the process and its live descendants."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] += int(line.split()[1]) / 1024
    return {"rss_mib": out["VmRSS"], "peak_rss_mib": out["VmHWM"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if http_get(url, 2)[0] < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- Prometheus histograms ------------------------------------------------------------


def scrape(http_url: str) -> dict[str, dict[str, float]]:
    """Every ``parley_*_seconds`` histogram as {name: {le: cumulative count, _sum, _count}}."""
    status, body = http_get(http_url + "/metrics")
    if status != 200:
        return {}
    out: dict[str, dict[str, float]] = {}
    pat = re.compile(r'^(parley_\w+_seconds)_(bucket|sum|count)(?:\{le="([^"]+)"\})? (\S+)$')
    for line in body.decode().splitlines():
        m = pat.match(line)
        if m:
            name, kind, le, value = m.groups()
            out.setdefault(name, {})[le if kind == "bucket" else "_" + kind] = float(value)
    return out


def hist_summary(before: dict[str, Any], after: dict[str, Any], name: str) -> dict[str, Any]:
    """Bucket-resolution percentiles of the observations made between two scrapes."""
    a, b = after.get(name, {}), before.get(name, {})
    count = a.get("_count", 0) - b.get("_count", 0)
    if count <= 0:
        return {"n": 0}
    les = sorted((float(k), k) for k in a if not k.startswith("_"))
    res: dict[str, Any] = {"n": int(count), "mean_ms": (a["_sum"] - b.get("_sum", 0)) / count * 1e3}
    for q in (50, 99):
        target = q / 100 * count
        for le, key in les:
            if a[key] - b.get(key, 0) >= target:
                res[f"p{q}_le_ms"] = le * 1e3 if le != math.inf else None
                break
    return res


# -- servers ------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http_url: str
    port: int
    kind: str

    @property
    def pid(self) -> int:
        return self.proc.pid


def _mysql(sql: str) -> None:
    subprocess.run(
        ["mysql", "--protocol=tcp", "-h127.0.0.1", "-uroot", "-e", sql],
        check=True,
        capture_output=True,
        timeout=30,
    )


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty database on the local MariaDB for one server's run; dropped after."""
    dbname = f"parley_bench_{uuid.uuid4().hex[:10]}"
    _mysql(f"CREATE DATABASE {dbname} CHARACTER SET utf8mb4")
    try:
        yield dbname
    finally:
        with contextlib.suppress(Exception):
            _mysql(f"DROP DATABASE IF EXISTS {dbname}")


@contextlib.contextmanager
def parley_server(
    fake_base: str,
    backend: str,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[Server]:
    port = free_port()
    data = workdir / f"parley-{port}"
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "PARLEY_LLM_PROVIDER": "openai",
            "PARLEY_LLM_BASE_URL": fake_base,
            "PARLEY_LLM_MODEL": "fake",
            "PARLEY_JWT_KEYS": "k1:" + secrets.token_hex(20),
            "PARLEY_DATA_DIR": str(data),
            "PARLEY_WS_UPGRADES_PER_IP_PER_HOUR": "100000000",
            "PARLEY_SIGNUPS_PER_IP_PER_HOUR": "100000000",
            "PARLEY_CHAT_SENDS_PER_USER_PER_MINUTE": "1000000",
            "PARLEY_TRUST_PROXY_HEADERS": "true",
        }
    )
    with contextlib.ExitStack() as stack:
        if backend == "mysql":
            dbname = stack.enter_context(scratch_database())
            env["PARLEY_DATABASE_URL"] = f"mysql+pymysql://root@127.0.0.1:3306/{dbname}"
            env["PARLEY_REDIS_URL"] = "redis://127.0.0.1:6379/0"
            subprocess.run([str(PARLEY_BIN), "migrate"], env=env, check=True, capture_output=True)
        else:
            env["PARLEY_DATABASE_URL"] = f"sqlite:///{data}/db.sqlite"
        env.update(extra_env or {})
        log = open(data / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(PARLEY_BIN), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
            yield Server(proc, f"http://127.0.0.1:{port}", port, f"parley-{backend}")
        finally:
            stop_process(proc)
            log.close()


@contextlib.contextmanager
def floor_server(
    fake_base: str, workdir: Path, *, durable: Literal["mysql", "sqlite"] | None = None
) -> Iterator[Server]:
    """The floor (``benchmarks/floor.py``); ``durable``: it stores each send before its
    ack, in a MariaDB database of its own or in a fresh SQLite file."""
    port = free_port()
    log = open(workdir / f"floor-{port}.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, str(HERE / "floor.py"), "--port", str(port), "--upstream", fake_base]
    with contextlib.ExitStack() as stack:
        if durable == "mysql":
            cmd += ["--mysql-database", stack.enter_context(scratch_database())]
        elif durable == "sqlite":
            cmd += ["--sqlite-path", str(workdir / f"floor-{port}.db")]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=str(ROOT))
        try:
            wait_http(f"http://127.0.0.1:{port}/nothing", proc)
            yield Server(proc, f"http://127.0.0.1:{port}", port, "floor")
        finally:
            stop_process(proc)
            log.close()


# -- one load run ---------------------------------------------------------------------


def workers_for(clients: int, frames_per_s: float, idle: bool = False) -> int:
    if idle:
        return max(1, min(MAX_WORKERS, math.ceil(clients / 2500)))
    return max(1, min(MAX_WORKERS, math.ceil(frames_per_s / FRAMES_PER_WORKER)))


def _start_spy(server: Server, label: str) -> subprocess.Popen[bytes] | None:
    """With --profile: py-spy samples the server (200 Hz, raw collapsed stacks)."""
    if PROFILE["dir"] is None:
        return None
    PROFILE["n"] += 1
    out = Path(PROFILE["dir"]) / f"{server.kind}-{label}-{PROFILE['n']}.txt"
    spy = subprocess.Popen(
        [
            *(str(ROOT / ".venv/bin/py-spy"), "record", "-p", str(server.pid)),
            *("-r", "200", "-f", "raw", "-o", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return spy


def _stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def stream_run(
    server: Server | None,
    fake_root: str,
    workdir: Path,
    *,
    clients: int,
    tokens: int,
    tps: float,
    stagger_ms: float = 0.0,
    mode: str = "stream",
    resume_every: int = 0,
    procs: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """One bounded load: every client sends one chat.send at the same instant (or staggered)."""
    procs = procs or workers_for(clients, clients * tps)
    timeout = timeout_s or (
        60.0 + tokens / max(tps, 1) * 2 + clients * 0.05 + stagger_ms * clients / 1000
    )
    spec: dict[str, Any] = {
        "mode": mode,
        "clients": clients,
        "tokens": tokens,
        "tps": tps,
        "stagger_ms": stagger_ms,
        "resume_every": resume_every,
        "source_ips": source_ips(8),
        "fake_url": fake_root,
        "run_id": uuid.uuid4().hex[:8],
        "timeout_s": timeout,
    }
    if server is not None:
        spec.update(http_url=server.http_url, ws_host="127.0.0.1", ws_port=server.port)
    probe: dict[str, Any] = {}

    spy: subprocess.Popen[bytes] | None = None

    def on_ready() -> None:
        nonlocal spy
        if server is not None:
            spy = _start_spy(server, f"{clients}x{tokens}")
        if server is not None:
            probe["cpu0"] = cpu_seconds(server.pid)
            probe["metrics0"] = scrape(server.http_url)
        probe["t0"] = time.monotonic()

    fetch_traces(fake_root, clear=True)
    gen = run_generator(spec, procs, workdir, on_ready=on_ready, timeout_s=timeout)
    wall = time.monotonic() - probe["t0"]
    _stop_spy(spy)
    res = analyse(gen, fetch_traces(fake_root, clear=True), tokens)
    res.update(
        streams=clients,
        tokens_per_stream=tokens,
        tps=tps,
        stagger_ms=stagger_ms,
        generator_procs=gen["procs"],
        generator_cpu_s=round(gen["generator_cpu_s"], 3),
        generator_frames_in=gen["generator_frames_in"],
        generator_timed_out=gen["timed_out"],
        setup_errors=gen["setup_errors"],
        connect_s=max((r.get("connect_s", 0) for r in gen["ready"]), default=0),
        setup_s=max((r.get("setup_s", 0) for r in gen["ready"]), default=0),
        stream_phase_wall_s=round(wall, 3),
    )
    if server is not None:
        cpu = cpu_seconds(server.pid) - probe["cpu0"]
        after = scrape(server.http_url)
        toks, frames = res["tokens_relayed"], res["frames"]
        res["server"] = {
            "kind": server.kind,
            "cpu_s_stream_phase": round(cpu, 3),
            "cpu_us_per_token": round(cpu / toks * 1e6, 1) if toks else None,
            "cpu_us_per_frame": round(cpu / frames * 1e6, 1) if frames else None,
            "cpu_util_stream_phase": round(cpu / wall, 3) if wall else None,
            **memory(server.pid),
            "relay_seconds_hist": hist_summary(probe["metrics0"], after, "parley_relay_seconds"),
            "dispatch_seconds_hist": hist_summary(
                probe["metrics0"], after, "parley_dispatch_seconds"
            ),
        }
    return res


def idle_run(
    server: Server, workdir: Path, connections: int, hold_s: float, windows: int = 1
) -> dict[str, Any]:
    """``windows`` consecutive windows of ``hold_s`` each: the first (``idle_cpu_util``)
    starts as the last socket is connected and pays for the collector's one look at
    every object the connects made (server/process.py); the later ones
    (``idle_cpu_util_steady``: their mean) are the idle state itself."""
    base = memory(server.pid)
    cpu_base = cpu_seconds(server.pid)
    spec: dict[str, Any] = {
        "mode": "idle",
        "clients": connections,
        "conns_per_user": 10,
        "source_ips": source_ips(max(1, math.ceil(connections / 2000))),
        "http_url": server.http_url,
        "ws_host": "127.0.0.1",
        "ws_port": server.port,
        "connect_concurrency": 32,
        "timeout_s": 120 + connections * 0.03,
    }
    probe: dict[str, Any] = {}

    def hold() -> None:
        probe["after_connect"] = memory(server.pid)
        c0 = cpu_seconds(server.pid)
        probe["setup_cpu_s"] = c0 - cpu_base
        spy = _start_spy(server, f"idle-{connections}")
        utils = []
        for _ in range(windows):
            time.sleep(hold_s)
            c1 = cpu_seconds(server.pid)
            utils.append((c1 - c0) / hold_s)
            c0 = c1
        _stop_spy(spy)
        probe["windows"] = utils
        probe["after_hold"] = memory(server.pid)

    gen = run_generator(spec, workers_for(connections, 0, idle=True), workdir, hold=hold)
    connected = sum(r["connected"] for r in gen["ready"])
    held = sum(1 for r in gen["records"] if r.get("ok"))
    rss = probe["after_hold"]["rss_mib"]
    return {
        "connections_requested": connections,
        "connected": connected,
        "held_to_end": held,
        "errors": gen["setup_errors"],
        "record_errors": _count_errors(gen["records"]),
        "rss_before_mib": round(base["rss_mib"], 1),
        "rss_connected_mib": round(rss, 1),
        "peak_rss_mib": round(probe["after_hold"]["peak_rss_mib"], 1),
        "kib_per_connection": round((rss - base["rss_mib"]) * 1024 / connected, 1)
        if connected
        else None,
        "idle_cpu_util": round(probe["windows"][0], 3),
        "idle_cpu_util_steady": round(statistics.fmean(probe["windows"][1:]), 4)
        if windows > 1
        else None,
        "idle_cpu_windows": [round(u, 4) for u in probe["windows"]],
        "setup_and_connect_cpu_s": round(probe["setup_cpu_s"], 2),
        "connect_wall_s": round(gen["ready_s"], 1),
        "hold_s": hold_s,
        "windows": windows,
        "generator_procs": gen["procs"],
    }


def _count_errors(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r.get("error"):
            out[r["error"]] = out.get(r["error"], 0) + 1
    return out


# -- scenarios ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_result(results_dir: Path, name: str, body: dict[str, Any], command: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    doc = {"scenario": name, "command": command, "machine": machine(), **body}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _brief(r: dict[str, Any]) -> str:
    s = r.get("server", {})
    return (
        f"ok={r['ok']}/{r['clients']} lost={r['lost_tokens']} reord={r['reordered_frames']} "
        f"relay p50/p99/max={r['relay_ms'].get('p50', 0):.2f}/{r['relay_ms'].get('p99', 0):.2f}/"
        f"{r['relay_ms'].get('max', 0):.2f}ms first p99={r['first_token_ms'].get('p99', 0):.1f}ms "
        f"f/t={r['frames_per_token'] or 0:.3f} cpu/tok={s.get('cpu_us_per_token')}us "
        f"rss={s.get('rss_mib', 0):.0f}MiB"
    )


def scenario_smoke(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A few clients, a few tokens, one resume: proves the harness end to end."""
    with running_fake_upstream() as (_p, fake_base):
        fake_root = fake_base[: -len("/v1")]
        with parley_server(fake_base, "sqlite", workdir) as srv:
            r = stream_run(srv, fake_root, workdir, clients=4, tokens=12, tps=100, resume_every=4)
            r2 = stream_run(srv, fake_root, workdir, clients=4, tokens=12, tps=100)
    _say("smoke " + _brief(r))
    return {"runs": [r, r2], "lost_tokens": r["lost_tokens"] + r2["lost_tokens"]}


def scenario_relay(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    levels = [1, 20] if args.quick else [1, 100, 500] + ([1000] if args.with_1000 else [])
    tokens = 40 if args.quick else 200  # 2 s / 10 s of streaming at 20 tokens/s
    tps = 20.0
    out: dict[str, Any] = {"tps": tps, "tokens_per_stream": tokens, "parley": [], "floor": []}
    with running_fake_upstream() as (fake_proc, fake_base):
        fake_root = fake_base[: -len("/v1")]
        _say("relay: direct-to-upstream floor, 1 stream")
        out["direct"] = stream_run(
            None, fake_root, workdir, clients=1, tokens=tokens, tps=tps, mode="direct"
        )
        for kind in ("parley", "floor"):
            cm = (
                parley_server(fake_base, "sqlite", workdir)
                if kind == "parley"
                else floor_server(fake_base, workdir)
            )
            with cm as srv:
                for n in levels:
                    f0 = cpu_seconds(fake_proc.pid)
                    r = stream_run(srv, fake_root, workdir, clients=n, tokens=tokens, tps=tps)
                    r["fake_upstream_cpu_s"] = round(cpu_seconds(fake_proc.pid) - f0, 3)
                    out[kind].append(r)
                    _say(f"relay {kind} {n} streams: " + _brief(r))
    return out


def scenario_comparison(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    streams, tokens, tps = (50, 50, 50.0) if args.quick else (200, 200, 50.0)
    out: dict[str, Any] = {"streams": streams, "tokens": tokens, "tps": tps}
    with running_fake_upstream() as (fake_proc, fake_base):
        fake_root = fake_base[: -len("/v1")]
        for backend, key in (("sqlite", "parley"), ("mysql", "parley_mysql")):
            with parley_server(fake_base, backend, workdir) as srv:
                f0 = cpu_seconds(fake_proc.pid)
                r = stream_run(srv, fake_root, workdir, clients=streams, tokens=tokens, tps=tps)
                r["fake_upstream_cpu_s"] = round(cpu_seconds(fake_proc.pid) - f0, 3)
                total_cpu = cpu_seconds(srv.pid)  # whole process life: startup + setup + run
                r["server"]["cpu_s_whole_run"] = round(total_cpu, 3)
                r["server"]["cpu_us_per_token_whole_run"] = (
                    round(total_cpu / r["tokens_relayed"] * 1e6, 1) if r["tokens_relayed"] else None
                )
                out[key] = r
                _say(f"comparison {key}: " + _brief(r))
        # the floor, and the durable floors: the floor storing each send in MariaDB or in
        # SQLite (group committed) before its ack and its upstream request, as Parley does
        floors: dict[str, Literal["mysql", "sqlite"] | None] = {
            "floor": None,
            "floor_durable": "mysql",
            "floor_durable_sqlite": "sqlite",
        }
        for key, durable in floors.items():
            with floor_server(fake_base, workdir, durable=durable) as srv:
                f0 = cpu_seconds(fake_proc.pid)
                r = stream_run(srv, fake_root, workdir, clients=streams, tokens=tokens, tps=tps)
                r["fake_upstream_cpu_s"] = round(cpu_seconds(fake_proc.pid) - f0, 3)
                total_cpu = cpu_seconds(srv.pid)
                r["server"]["cpu_s_whole_run"] = round(total_cpu, 3)
                r["server"]["cpu_us_per_token_whole_run"] = (
                    round(total_cpu / r["tokens_relayed"] * 1e6, 1) if r["tokens_relayed"] else None
                )
                out[key] = r
                _say(f"comparison {key}: " + _brief(r))
    return out


def scenario_dispatch(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    clients = 30 if args.quick else 200
    out: dict[str, Any] = {"clients": clients, "stagger_ms": 20.0, "tokens": 5}
    backends = ["sqlite", "mysql", "floor", "floor_durable"]
    with running_fake_upstream() as (_p, fake_base):
        fake_root = fake_base[: -len("/v1")]
        for backend in backends:
            # the floor (benchmarks/floor.py: the same web stack, no auth, no store, no
            # cache) in the same minutes says what the box and the harness alone cost;
            # floor_durable adds one bare pymysql transaction before each ack
            cm = (
                floor_server(
                    fake_base, workdir, durable="mysql" if backend == "floor_durable" else None
                )
                if backend.startswith("floor")
                else parley_server(fake_base, backend, workdir)
            )
            with cm as srv:
                # warm-up (pool connections, first imports), then the measured run
                stream_run(srv, fake_root, workdir, clients=5, tokens=5, tps=200)
                r = stream_run(
                    srv, fake_root, workdir, clients=clients, tokens=5, tps=200, stagger_ms=20.0
                )
                out[backend] = r
                _say(
                    f"dispatch {backend}: ack p50/p99={r['ack_ms'].get('p50', 0):.1f}/"
                    f"{r['ack_ms'].get('p99', 0):.1f}ms upstream p50/p99="
                    f"{r['send_to_upstream_ms'].get('p50', 0):.1f}/"
                    f"{r['send_to_upstream_ms'].get('p99', 0):.1f}ms lost={r['lost_tokens']}"
                )
    return out


def scenario_idle(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    levels = [200, 1000] if args.quick else [1000, 5000, 10000]
    out: dict[str, Any] = {"levels": []}
    # each window is one ping interval (25 s): every socket is pinged once in it; the
    # largest level is held three windows (the first pays for the connects' objects)
    hold = 5.0 if args.quick else 25.0
    with running_fake_upstream() as (_p, fake_base):
        for n in levels:
            with parley_server(fake_base, "sqlite", workdir) as srv:
                r = idle_run(srv, workdir, n, hold_s=hold, windows=3 if n == levels[-1] else 1)
            out["levels"].append(r)
            _say(
                f"idle {n}: connected={r['connected']} rss={r['rss_connected_mib']}MiB "
                f"({r['kib_per_connection']} KiB/conn) idle cpu={r['idle_cpu_windows']}"
            )
        # the largest level again without the server's pings (one an hour): what they cost
        n = levels[-1]
        quiet = {"PARLEY_WS_PING_INTERVAL_SECONDS": "3600"}
        with parley_server(fake_base, "sqlite", workdir, extra_env=quiet) as srv:
            r = idle_run(srv, workdir, n, hold_s=hold, windows=3)
        out["without_pings"] = r
        _say(
            f"idle {n} without pings: idle cpu={r['idle_cpu_windows']} rss={r['rss_connected_mib']}"
        )
        # and with the contract's pings on MariaDB + Redis (the many-instance deployment)
        with parley_server(fake_base, "mysql", workdir) as srv:
            r = idle_run(srv, workdir, n, hold_s=hold, windows=3)
        out["mysql"] = r
        _say(
            f"idle {n} on MariaDB + Redis: connected={r['connected']} "
            f"idle cpu={r['idle_cpu_windows']} rss={r['rss_connected_mib']}"
        )
    return out


def scenario_workers(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``parley serve --workers 1`` and ``2`` on MariaDB + Redis: the comparison's 200
    streams at 50 tok/s, and 1,000 streams at 20 tok/s (CPU and memory: all processes)."""
    heavy = (100, 60, 20.0) if args.quick else (1000, 200, 20.0)
    comp = (50, 50, 50.0) if args.quick else (200, 200, 50.0)
    out: dict[str, Any] = {"comparison": {}, "streams_1000": {}}
    with running_fake_upstream() as (_fake_proc, fake_base):
        fake_root = fake_base[: -len("/v1")]
        for n in (1, 2):
            for key, (clients, tokens, tps) in (("comparison", comp), ("streams_1000", heavy)):
                with parley_server(fake_base, "mysql", workdir, workers=n) as srv:
                    r = stream_run(srv, fake_root, workdir, clients=clients, tokens=tokens, tps=tps)
                    r["workers"] = n
                    out[key][str(n)] = r
                    _say(f"workers {n} {key}: " + _brief(r))
    return out


SCENARIOS = {
    "smoke": scenario_smoke,
    "relay": scenario_relay,
    "comparison": scenario_comparison,
    "dispatch": scenario_dispatch,
    "idle": scenario_idle,
    "workers": scenario_workers,
}
DEFAULT = ["relay", "comparison", "dispatch", "idle"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small loads, about a minute each")
    p.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="scenarios to run")
    p.add_argument("--with-1000", action="store_true", help="relay: add the 1,000-stream level")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--profile",
        type=Path,
        help="sample the server with py-spy (pip install py-spy) into this directory",
    )
    args = p.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE["dir"] = str(args.profile)
    names = args.only or DEFAULT
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    suffix = "-quick" if args.quick else ""
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as d:
        for name in names:
            _say(f"scenario {name}{suffix}")
            t0 = time.monotonic()
            body = SCENARIOS[name](args, Path(d))
            body["wall_s"] = round(time.monotonic() - t0, 1)
            written.append(write_result(args.results_dir, name + suffix, body, command))
    if not args.no_plots:
        from benchmarks.plots import plot_all

        plot_all(args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
