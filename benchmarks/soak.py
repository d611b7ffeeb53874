"""Soak: hold N concurrent streams for a long time on MariaDB + Redis and watch for leaks.

Starts the fake upstream, a fresh (migrated) MariaDB database, a redis-server of its own
(never the shared one) and one ``parley serve`` on them. Load-generator worker processes
(``soak.py worker``) drive ``--streams`` guest clients; each keeps one WebSocket and loops:
``chat.send`` (the fake answers ``--tokens`` tokens at ``--tps``), follow to ``chat.done``,
send the next turn at once (a new conversation every ``--turns-per-conversation`` turns).
A ``--drop-fraction`` of turns close the socket mid-answer, reconnect and ``chat.resume``
from what they hold. Every answer is checked against the fake's ``expected_text``: a
mismatch or a status other than ``completed`` is ``lost``, a chunk number seen twice
``duplicated``; ``error`` frames, unexpected closes, HTTP failures, timeouts and client
exceptions are ``errors`` (by kind). At the deadline no new turn starts; turns in flight
finish and are checked ("tail" samples).

Every ``--sample-seconds`` this process (which drives no load) records the server's RSS,
CPU seconds and share of a core over the interval, open fds, its Redis's ``used_memory``
and key count, and the generator's running totals. Verdict: RSS, fds and Redis memory at
the end of the load against after the warm-up (the first 5 minutes, or 1/6 of a shorter
run), the RSS slope after warm-up, and lost / duplicated / errors. Exit status 1 when
anything was lost, duplicated or failed (RSS growth is reported, not enforced).

    .venv/bin/python benchmarks/soak.py                          # 200 streams, 30 minutes
    .venv/bin/python benchmarks/soak.py --minutes 1 --streams 20 --out /tmp/s.json --plot /tmp/s.png

Writes benchmarks/results/soak.json and soak.png by default. Needs MariaDB on 127.0.0.1
(root, no password; ``make services``) and the redis-server binary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fake_upstream import expected_text  # noqa: E402
from benchmarks.loadgen import _raise_nofile, _split, _write_atomic  # noqa: E402
from benchmarks.run import cpu_seconds, machine, memory, workers_for  # noqa: E402

RESULTS = HERE / "results"
PERF = time.perf_counter_ns  # CLOCK_MONOTONIC: comparable across processes
ERROR_LINE = re.compile(r'"level":\s*"(error|critical)"|^Traceback|^ERROR ')


def limit_env(run_s: float) -> dict[str, str]:
    """The limits this load would hit with the defaults (all clients are guests on
    127.0.0.1), raised; the access token outlives the run (no refresh mid-soak)."""
    big = "100000000"
    return {
        "PARLEY_WS_UPGRADES_PER_IP_PER_HOUR": big,
        "PARLEY_SIGNUPS_PER_IP_PER_HOUR": big,
        "PARLEY_CHAT_SENDS_PER_USER_PER_MINUTE": big,
        "PARLEY_GUEST_CHAT_SENDS_PER_MINUTE": big,  # default 5
        "PARLEY_GUEST_MAX_CONVERSATIONS": big,  # default 20
        "PARLEY_GUEST_MAX_STORED_BYTES": str(1 << 30),  # default 5 MiB
        "PARLEY_ACCESS_TOKEN_TTL_SECONDS": str(int(min(86_400, max(900, run_s + 1800)))),
    }


def _prompt(tokens: int, tps: float, tag: str) -> str:
    # loadgen._magic also sets "bench", which makes the fake keep every token's write time
    # in memory: over a soak that would grow the fake without bound.
    return "[[fake:" + json.dumps({"tokens": tokens, "tps": tps}) + "]] soak " + tag


# -- the worker (trio): a slice of the clients ---------------------------------------


@dataclass
class _Client:
    i: int
    token: str = ""
    conv: str = ""
    in_conv: int = 0
    turn: int = 0
    ws: Any = None


async def _worker(spec: dict[str, Any], out_path: str) -> None:
    import httpx
    import orjson
    import trio
    import wsproto.utilities
    from trio_websocket import ConnectionClosed, connect_websocket_url

    tokens, tps, per_conv = spec["tokens"], spec["tps"], spec["turns_per_conversation"]
    expected = expected_text(tokens)
    turn_timeout = tokens / tps * 3 + 30
    rng = random.Random(spec["seed"])
    clients = [_Client(spec["first_index"] + k) for k in range(spec["clients"])]
    tot = dict.fromkeys(("turns", "tokens", "lost", "duplicated", "duplicate_chunks", "drops"), 0)
    errors: dict[str, int] = {}
    client_faults: dict[str, int] = {}  # the load generator's own, not the server's
    examples: list[dict[str, Any]] = []
    end_ns = 0
    done = False

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def dump() -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        doc = {"totals": tot, "errors": errors, "lost_examples": examples[:10], "done": done}
        doc["client_faults"] = client_faults
        doc["cpu_s"] = ru.ru_utime + ru.ru_stime
        _write_atomic(out_path, orjson.dumps(doc))

    http = httpx.AsyncClient(base_url=spec["http_url"], timeout=30)
    limiter = trio.CapacityLimiter(32)

    async def new_conversation(c: _Client) -> None:
        auth = {"Authorization": f"Bearer {c.token}"}
        r = await http.post("/api/v1/conversations", json={"title": "soak"}, headers=auth)
        if r.status_code != 201:
            err(f"http_{r.status_code}:conversation")
            return  # keep the old one
        c.conv, c.in_conv = r.json()["id"], 0

    async def hold(
        c: _Client, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One WebSocket, its reader task in a nursery of its own: a fault of the client
        library (trio-websocket answers a ping with a pong after it began to close, which
        wsproto refuses) ends that socket (the client sees ConnectionClosed and goes on),
        not the whole worker. Counted apart from the server's errors."""
        try:
            async with trio.open_nursery() as own:
                protocols = ["chat.v1", f"bearer.{c.token}"]
                ws = await connect_websocket_url(
                    own, spec["ws_url"], subprotocols=protocols, message_queue_size=4096
                )
                task_status.started(ws)
        except* wsproto.utilities.LocalProtocolError:
            client_faults["trio_websocket_local_protocol_error"] = (
                client_faults.get("trio_websocket_local_protocol_error", 0) + 1
            )

    async def close(c: _Client) -> None:
        """Close the client's socket as a browser would: without waiting for ever (a socket
        whose reader died of a client-library fault never completes its close)."""
        with trio.move_on_after(5):
            await c.ws.aclose()

    async def connect(c: _Client, nursery: trio.Nursery) -> None:
        with trio.fail_after(15):
            c.ws = await nursery.start(hold, c)
            hello = orjson.loads(await c.ws.get_message())
        if hello.get("type") != "session.ready":
            raise RuntimeError(f"hello:{hello.get('type')}")

    async def setup(c: _Client, nursery: trio.Nursery) -> None:
        async with limiter:
            hdr = {"X-Forwarded-For": f"10.88.{c.i // 250 % 250}.{c.i % 250}"}
            r = await http.post("/api/v1/auth/guest", json={}, headers=hdr)
            if r.status_code != 201:
                raise RuntimeError(f"http_{r.status_code}:guest")
            c.token = r.json()["accessToken"]
            await new_conversation(c)
            await connect(c, nursery)

    async def one_turn(c: _Client, nursery: trio.Nursery) -> None:
        if c.in_conv >= per_conv:
            await new_conversation(c)
        c.in_conv += 1
        c.turn += 1
        tag = f"{spec['run_id']}-{c.i}-{c.turn}"
        data = {"conversationId": c.conv, "messageId": str(uuid.uuid4())}
        data["content"] = _prompt(tokens, tps, tag)
        send = orjson.dumps({"type": "chat.send", "requestId": tag, "data": data}).decode()
        await c.ws.send_message(send)
        drop_at = rng.randint(1, max(1, tokens - 2)) if rng.random() < spec["drop"] else None
        useq: int | None = None
        aseq: int | None = None
        last, dup, parts, status = -1, 0, [], None

        async def reconnect_and_go_on() -> None:  # resend (idempotent) or resume
            await close(c)
            await connect(c, nursery)
            if aseq is None:
                await c.ws.send_message(send)
                return
            resume = {"conversationId": c.conv, "lastMessageSeq": useq, "lastChunk": last}
            await c.ws.send_message(orjson.dumps({"type": "chat.resume", "data": resume}).decode())

        with trio.move_on_after(turn_timeout) as waited:
            while status is None:
                try:
                    f = orjson.loads(await c.ws.get_message())
                except ConnectionClosed as exc:
                    err(f"closed:{getattr(exc.reason, 'code', None)}")
                    await reconnect_and_go_on()
                    continue
                typ, d = f.get("type"), f.get("data") or {}
                mine = aseq is not None and d.get("seq") == aseq
                if typ == "chat.ack":
                    useq, aseq = d["userSeq"], d["assistantSeq"]
                elif typ == "chat.stream" and mine:
                    if d["chunk"] <= last:
                        dup += 1
                    else:
                        parts.append(d["delta"])
                        tot["tokens"] += d["chunk"] - last
                        last = d["chunk"]
                elif typ == "chat.message" and mine:
                    parts = [d["content"]]  # finished while we were away: the whole text
                    if d["status"] != "streaming":
                        tot["tokens"] += max(0, tokens - 1 - last)
                        status = d["status"]
                elif typ == "chat.done" and mine:
                    status = d["status"]
                elif typ == "chat.resumed":
                    if d.get("reset"):
                        err("resume_reset")
                elif typ == "error":
                    err(f"error:{d.get('code')}")
                    c.in_conv = per_conv  # the conversation may still be busy: move on
                    return
                else:
                    err(f"unexpected:{typ}")
                if drop_at is not None and last >= drop_at and status is None:
                    drop_at = None
                    tot["drops"] += 1
                    await reconnect_and_go_on()
        if waited.cancelled_caught:
            err("turn_timeout")
            c.in_conv = per_conv
            await close(c)
            await connect(c, nursery)
            return
        text = "".join(parts)
        tot["turns"] += 1
        if text != expected or status != "completed":
            tot["lost"] += 1
            if len(examples) < 10:
                examples.append({"client": c.i, "turn": c.turn, "status": status, "got": text[:80]})
        if dup:
            tot["duplicated"] += 1
            tot["duplicate_chunks"] += dup

    async def client(c: _Client, ready: trio.Event, go: trio.Event) -> None:
        async with trio.open_nursery() as nursery:  # the WebSockets' reader tasks
            try:
                await setup(c, nursery)
            except Exception as exc:
                err(f"setup:{exc}"[:80])
                return
            finally:
                pending.discard(c.i)
                if not pending:
                    ready.set()
            await go.wait()
            await trio.sleep(rng.uniform(0, tokens / tps))  # spread the turns out
            while PERF() < end_ns:
                try:
                    await one_turn(c, nursery)
                except Exception as exc:  # one client's failure must not end the worker
                    err(f"exception:{type(exc).__name__}")
                    c.in_conv = per_conv  # its turn may still be running: a new conversation
                    await trio.sleep(1)
                    with trio.move_on_after(20):
                        try:
                            await close(c)
                            await connect(c, nursery)
                        except Exception as exc2:
                            err(f"exception:{type(exc2).__name__}")
            await close(c)

    async def progress() -> None:
        while True:
            dump()
            await trio.sleep(1)

    pending = {c.i for c in clients}
    ready, go = trio.Event(), trio.Event()
    async with trio.open_nursery() as top:
        top.start_soon(progress)
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(client, c, ready, go)
            if not clients:
                ready.set()
            with trio.move_on_after(180):
                await ready.wait()
            print("READY " + json.dumps({"errors": errors}), flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
            if not line.startswith("GO"):
                nursery.cancel_scope.cancel()
            else:
                end_ns = int(line.split()[1])
                nursery.cancel_scope.deadline = trio.current_time() + (
                    (end_ns - PERF()) / 1e9 + turn_timeout + 30
                )
                go.set()
        if nursery.cancel_scope.cancelled_caught:
            err("worker_deadline")
        await http.aclose()
        done = True
        dump()
        top.cancel_scope.cancel()


# -- the orchestrator and sampler (plain sync code) ------------------------------------


def _progress(outs: list[Path], final: bool = False) -> dict[str, Any]:
    """The workers' running totals; ``final``: a worker that did not finish (crashed,
    killed) is an error, not a silent gap in the figures."""
    agg: dict[str, Any] = {
        "totals": {},
        "errors": {},
        "client_faults": {},
        "lost_examples": [],
        "cpu_s": 0.0,
    }
    failed: Counter[str] = Counter()
    for out in outs:
        if not out.exists():
            if final:
                agg["errors"]["worker_wrote_nothing"] = (
                    agg["errors"].get("worker_wrote_nothing", 0) + 1
                )
            continue
        doc = json.loads(out.read_text())
        if final and not doc.get("done"):
            agg["errors"]["worker_did_not_finish"] = (
                agg["errors"].get("worker_did_not_finish", 0) + 1
            )
        for part in ("totals", "errors", "client_faults"):
            for k, v in doc.get(part, {}).items():
                agg[part][k] = agg[part].get(k, 0) + v
        agg["lost_examples"] += doc["lost_examples"]
        agg["cpu_s"] += doc["cpu_s"]
    agg["errors"].update(failed)
    return agg


def _growth(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    """``samples``: the one after warm-up, then the last one under load."""
    a, b = samples[0][key], samples[-1][key]
    pct = round((b - a) / a * 100, 2) if a else 0.0
    return {"after_warmup": a, "end": b, "growth": round(b - a, 2), "growth_pct": pct}


def _slope_per_hour(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (seconds), per hour."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600, 2)


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import redis

    from benchmarks.cluster_env import fresh_database
    from benchmarks.fake_upstream import running_fake_upstream
    from benchmarks.run import parley_server
    from tests.support.cluster import RedisServer

    run_s = args.minutes * 60
    env = limit_env(run_s)
    with (
        running_fake_upstream() as (fake, fake_base),
        fresh_database() as db_url,
        RedisServer(workdir) as rs,
        # "sqlite" only names run.py's default database URL, replaced here by MariaDB's
        parley_server(
            fake_base,
            "sqlite",
            workdir,
            extra_env={**env, "PARLEY_DATABASE_URL": db_url, "PARLEY_REDIS_URL": rs.url},
        ) as srv,
    ):
        procs = args.procs or workers_for(args.streams, args.streams * args.tps)
        spec = {
            "http_url": srv.http_url,
            "ws_url": f"ws://127.0.0.1:{srv.port}/ws",
            "tokens": args.tokens,
            "tps": args.tps,
            "drop": args.drop_fraction,
            "turns_per_conversation": args.turns_per_conversation,
            "run_id": uuid.uuid4().hex[:8],
        }
        workers: list[subprocess.Popen[str]] = []
        outs: list[Path] = []
        rc = redis.Redis(port=rs.port)
        try:
            for k, (first, size) in enumerate(_split(args.streams, procs)):
                sp, out = workdir / f"soak-spec-{k}.json", workdir / f"soak-out-{k}.json"
                sp.write_text(
                    json.dumps({**spec, "first_index": first, "clients": size, "seed": k})
                )
                cmd = [sys.executable, str(HERE / "soak.py"), "worker", str(sp), str(out)]
                pipe = subprocess.PIPE
                workers.append(subprocess.Popen(cmd, stdin=pipe, stdout=pipe, text=True))
                outs.append(out)
            for w in workers:
                assert w.stdout is not None
                line = w.stdout.readline()  # bounded: a worker waits 180 s at most
                if not line.startswith("READY"):
                    raise RuntimeError(f"a worker did not get ready: {line!r} rc={w.poll()}")
            samples: list[dict[str, Any]] = []
            prev: tuple[float, float] | None = None
            t0 = time.monotonic()

            def sample(tick: float) -> None:
                nonlocal prev
                t, cpu = time.monotonic() - t0, cpu_seconds(srv.pid)
                prog = _progress(outs)
                tot = prog["totals"]
                samples.append(
                    {
                        "t_s": round(t, 2),
                        "phase": "load" if tick <= run_s + 1e-6 else "tail",
                        "rss_mib": round(memory(srv.pid)["rss_mib"], 2),
                        "cpu_s": round(cpu, 2),
                        "cpu_share": round((cpu - prev[1]) / (t - prev[0]), 3) if prev else None,
                        "fds": len(os.listdir(f"/proc/{srv.pid}/fd")),
                        "redis_used_memory_bytes": int(rc.info("memory")["used_memory"]),
                        "redis_keys": int(rc.dbsize()),
                        "turns": tot.get("turns", 0),
                        "tokens": tot.get("tokens", 0),
                        "lost": tot.get("lost", 0),
                        "errors": sum(prog["errors"].values()),
                    }
                )
                prev = (t, cpu)

            sample(0.0)  # connected and idle, before the first turn
            end_ns = PERF() + int(run_s * 1e9)
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(f"GO {end_ns}\n")
                w.stdin.flush()
            hard_stop = t0 + run_s + args.tokens / args.tps * 3 + 120
            tick = 0.0
            while any(w.poll() is None for w in workers) and time.monotonic() < hard_stop:
                tick += args.sample_seconds
                time.sleep(max(0.0, t0 + tick - time.monotonic()))
                sample(tick)
            overran = any(w.poll() is None for w in workers)
            # what Redis holds at the end, by key prefix (idem: 24 h, tstream: 120 s linger)
            prefixes = Counter(k.split(b":")[0].decode() for k in rc.scan_iter(count=1000))
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                w.wait()
            rc.close()
        fake_cpu = cpu_seconds(fake.pid)
        log = workdir / f"parley-{srv.port}" / "server.log"
    prog = _progress(outs, final=True)
    errors = dict(prog["errors"], **({"generator_overran": 1} if overran else {}))
    log_errors = [ln[:300] for ln in log.read_text(errors="replace").splitlines()]
    log_errors = [ln for ln in log_errors if ERROR_LINE.search(ln)]
    load = [s for s in samples if s["phase"] == "load"]
    warm_s = min(300.0, run_s / 6)
    warm = next((s for s in load if s["t_s"] >= warm_s), load[-1])
    after = [s for s in load if s["t_s"] >= warm["t_s"]]
    tot = dict(prog["totals"], errors=sum(errors.values()), errors_by_kind=errors)
    rss = _growth(after, "rss_mib")
    return {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "plot", "procs")},
            "generator_procs": len(workers),
            "backend": "MariaDB + Redis (own redis-server)",
            "server_env_limits": env,
        },
        "samples": samples,
        "totals": tot,
        "lost_examples": prog["lost_examples"][:10],
        "client_faults": prog["client_faults"],
        "verdict": {
            "warmup_s": warm_s,
            "rss_mib": rss,
            "rss_slope_mib_per_hour_after_warmup": _slope_per_hour(
                [s["t_s"] for s in after], [s["rss_mib"] for s in after]
            ),
            "fds": _growth(after, "fds"),
            "redis_used_memory_bytes": _growth(after, "redis_used_memory_bytes"),
            "redis_keys": _growth(after, "redis_keys"),
            "rss_growth_under_5_pct": rss["growth_pct"] < 5,
            "nothing_lost_or_failed": tot["lost"] == tot["duplicated"] == tot["errors"] == 0,
        },
        "redis_keys_by_prefix_at_end": dict(prefixes.most_common()),
        "server_log_error_lines": {"count": len(log_errors), "first": log_errors[:5]},
        "generator_cpu_s": round(prog["cpu_s"], 2),
        "fake_upstream_cpu_s": round(fake_cpu, 2),
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    from benchmarks.plots import plt  # matplotlib with the Agg backend, as plots.py sets it

    samples, v = doc["samples"], doc["verdict"]
    xs = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    panels = [
        ("rss_mib", "server RSS, MiB", 1.0),
        ("cpu_share", "server CPU, share of a core", 1.0),
        ("fds", "server open file descriptors", 1.0),
        ("redis_used_memory_bytes", "Redis used_memory, MiB", 1 / (1 << 20)),
    ]
    for ax, (key, label, scale) in zip(axes.flat, panels, strict=True):
        ys = [s[key] * scale if s[key] is not None else None for s in samples]
        ax.plot(xs, ys, marker=".", lw=1)
        ax.axvspan(0, v["warmup_s"] / 60, color="gray", alpha=0.15, label="warm-up")
        ax.axvline(doc["settings"]["minutes"], color="gray", ls=":", lw=0.8, label="load ends")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    limit = v["rss_mib"]["after_warmup"] * 1.05
    axes[0][0].axhline(limit, color="red", lw=0.8, ls="--", label="+5 % after warm-up")
    axes[0][0].legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    st, t = doc["settings"], doc["totals"]
    fig.suptitle(
        f"Soak: {st['streams']} streams x {st['tokens']} tokens at {st['tps']:g} tok/s, "
        f"MariaDB + Redis: {t.get('turns', 0):,} turns, lost {t.get('lost', 0)}, "
        f"duplicated {t.get('duplicated', 0)}, errors {t['errors']}; "
        f"RSS {v['rss_mib']['growth_pct']:+.1f} % after warm-up"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:  # soak.py worker SPEC OUT (started by soak() below)
        import trio

        _raise_nofile()
        trio.run(_worker, json.loads(Path(argv[1]).read_text()), argv[2])
        return 0
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--tokens", type=int, default=200, help="tokens per answer")
    p.add_argument("--tps", type=float, default=20.0, help="tokens per second per answer")
    p.add_argument("--drop-fraction", type=float, default=0.05)
    p.add_argument("--turns-per-conversation", type=int, default=10)
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=0, help="generator processes (0: by load)")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "soak.png")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parley-soak-") as d:
        body = soak(args, Path(d))
    command = "python benchmarks/soak.py " + shlex.join(argv)
    doc = {"scenario": "soak", "command": command.strip(), "machine": machine(), **body}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, args.plot)
    t, v = doc["totals"], doc["verdict"]
    print(
        f"wrote {args.out} and {args.plot}: {t.get('turns', 0)} turns, {t.get('tokens', 0)} "
        f"tokens, lost {t.get('lost', 0)}, duplicated {t.get('duplicated', 0)}, errors "
        f"{t['errors_by_kind']}; RSS {v['rss_mib']}; fds {v['fds']}",
        flush=True,
    )
    return 0 if v["nothing_lost_or_failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
