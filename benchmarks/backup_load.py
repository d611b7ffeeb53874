"""Backup under load: relay latency while `parley jobs run backup` dumps a database of a
million messages (MariaDB + Redis), against the same load without a backup.

    python benchmarks/backup_load.py                    # 1,000,000 messages (~15 min)
    python benchmarks/backup_load.py --messages 20000 --results-dir /tmp/x   # quick

Steps: seed a fresh MariaDB database (users, conversations, messages of 40-600
characters); time one backup with no load (it also warms the buffer pool); start the
fake upstream and `parley serve` on that database with Redis; run the stream load once
without a backup (baseline), then again with a backup started at the same moment, then
once more without (a bracket: the box is shared; its load average is recorded). The
load is streams started one after another (``--stagger-ms`` apart, sized so the starts
cover the backup), each ``--tokens`` tokens at ``--tps``: relay latency, turn starts
(send -> ack, a database write each) and first tokens all happen during the backup.
The backup runs under ``nice -n 10`` as the systemd job unit runs it (``Nice=10``).
Writes ``benchmarks/results/backup_load.json`` (with the command and the machine).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fake_upstream import running_fake_upstream  # noqa: E402
from benchmarks.run import (  # noqa: E402
    PARLEY_BIN,
    RESULTS,
    _mysql,
    _say,
    cpu_seconds,
    parley_server,
    stream_run,
    write_result,
)

WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "token",
    "stream",
    "message",
    "parley",
    "backup",
    "restore",
    "chat",
    "user",
    "assistant",
    "database",
    "snapshot",
    "latency",
    "relay",
    "frame",
    "socket",
    "consistent",
    "row",
    "checksum",
    "manifest",
]


def seed(url: str, messages: int, per_conversation: int = 100, per_user: int = 10) -> float:
    """Bulk rows straight into the schema; returns seconds taken."""
    import datetime as dt

    import pymysql

    from jobs.dumpfmt import mysql_connect

    rng = random.Random(7)
    t0 = time.monotonic()
    conn = mysql_connect(url, autocommit=False)
    cur = conn.cursor()
    cur.execute("SET unique_checks=0")
    cur.execute("SET foreign_key_checks=0")
    now = dt.datetime(2026, 11, 1)
    conversations = max(1, messages // per_conversation)
    users = max(1, conversations // per_user)
    user_ids = [str(uuid.uuid4()) for _ in range(users)]
    cur.executemany(
        "INSERT INTO users (id, kind, role, created_at, last_active_at) "
        "VALUES (%s, 'guest', 'user', %s, %s)",
        [(u, now, now) for u in user_ids],
    )
    done = 0
    batch: list[tuple[Any, ...]] = []
    for c in range(conversations):
        cid, uid = str(uuid.uuid4()), user_ids[c // per_user]
        cur.execute(
            "INSERT INTO conversations (id, user_id, title, last_seq, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (cid, uid, f"conversation {c}", per_conversation, now, now),
        )
        for seq in range(1, per_conversation + 1):
            n = rng.randint(8, 110)
            text = " ".join(rng.choice(WORDS) for _ in range(n))
            t = now + dt.timedelta(seconds=seq)
            role = "user" if seq % 2 else "assistant"
            batch.append((str(uuid.uuid4()), cid, uid, seq, role, text, "completed", n, t, t))
            done += 1
            if len(batch) >= 5000:
                _insert_messages(cur, batch)
                conn.commit()
                batch = []
        if done >= messages:
            break
    if batch:
        _insert_messages(cur, batch)
    conn.commit()
    conn.close()
    assert isinstance(conn, pymysql.connections.Connection)
    return time.monotonic() - t0


def _insert_messages(cur: Any, rows: list[tuple[Any, ...]]) -> None:
    cur.executemany(
        "INSERT INTO messages (id, conversation_id, user_id, seq, role, content, status,"
        " completion_tokens, created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
        rows,
    )


def backup_env(url: str, backup_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PARLEY_DATABASE_URL=url,
        PARLEY_BACKUP_DIR=str(backup_dir),
        PARLEY_BACKUP_KEEP="1",
        PARLEY_JWT_KEYS="k1:" + secrets.token_hex(20),
    )
    return env


def run_backup(url: str, backup_dir: Path) -> subprocess.Popen[str]:
    # nice 10, as deploy/systemd/parley-job@.service runs it: the server comes first
    return subprocess.Popen(
        ["nice", "-n", "10", str(PARLEY_BIN), "jobs", "run", "backup"],
        env=backup_env(url, backup_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def settle(url: str, timeout: float = 180.0) -> dict[str, Any]:
    """Wait for InnoDB to write back the seed's dirty pages (it would slow both runs)."""
    from jobs.dumpfmt import mysql_connect

    conn = mysql_connect(url)
    t0 = time.monotonic()
    try:
        cur = conn.cursor()
        while True:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            dirty = int(cur.fetchone()[1])
            if dirty < 200 or time.monotonic() - t0 > timeout:
                break
            time.sleep(2)
        cur.execute("SELECT @@innodb_buffer_pool_size")
        pool = int(cur.fetchone()[0])
    finally:
        conn.close()
    return {
        "waited_s": round(time.monotonic() - t0, 1),
        "dirty_pages_left": dirty,
        "innodb_buffer_pool_mib": pool >> 20,
    }


def summary(r: dict[str, Any], load_before: tuple[float, ...]) -> dict[str, Any]:
    s = r.get("server", {})
    return {
        # the box's load average (1 min) before and after: other work on the machine shows here
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "ok": r["ok"],
        "clients": r["clients"],
        "lost_tokens": r["lost_tokens"],
        "relay_ms": r["relay_ms"],
        "ack_ms": r["ack_ms"],
        "first_token_ms": r["first_token_ms"],
        "stream_phase_wall_s": r["stream_phase_wall_s"],
        "server_cpu_util": s.get("cpu_util_stream_phase"),
        "relay_seconds_hist": s.get("relay_seconds_hist"),
        "dispatch_seconds_hist": s.get("dispatch_seconds_hist"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--tps", type=float, default=20.0)
    p.add_argument("--stagger-ms", type=float, default=0.0, help="0: from the backup's time")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--keep-database", action="store_true")
    args = p.parse_args(argv)
    command = "python benchmarks/backup_load.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    dbname = f"parley_bench_backup_{uuid.uuid4().hex[:8]}"
    url = f"mysql+pymysql://root@127.0.0.1:3306/{dbname}"
    out: dict[str, Any] = {"messages": args.messages, "database": "MariaDB + Redis"}
    _mysql(f"CREATE DATABASE {dbname} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        from store.migrate import upgrade_to_head

        upgrade_to_head(url)
        _say(f"seeding {args.messages:,} messages into {dbname}")
        out["seed_s"] = round(seed(url, args.messages), 1)
        _say(f"seeded in {out['seed_s']} s")
        out["settle"] = settle(url)
        _say(f"settled: {out['settle']}")
        with tempfile.TemporaryDirectory(prefix="parley-bench-backup-") as d:
            work = Path(d)
            t0 = time.monotonic()
            proc = run_backup(url, work / "unloaded")
            stdout, stderr = proc.communicate()
            assert proc.returncode == 0, stderr
            out["unloaded_backup"] = {"wall_s": round(time.monotonic() - t0, 1), "line": stdout}
            dumps = list((work / "unloaded").glob("*.sql.gz"))
            out["dump_mib"] = round(dumps[0].stat().st_size / (1 << 20), 1)
            _say(f"unloaded backup: {stdout.strip()}")
            backup_s = out["unloaded_backup"]["wall_s"]
            stagger = args.stagger_ms or max(50.0, backup_s * 1000 / args.clients)
            load = {
                "clients": args.clients,
                "tokens": args.tokens,
                "tps": args.tps,
                "stagger_ms": round(stagger, 1),
            }
            out["load"] = load
            with running_fake_upstream() as (_fp, fake_base):
                fake_root = fake_base[: -len("/v1")]
                with parley_server(
                    fake_base, "mysql", work, extra_env={"PARLEY_DATABASE_URL": url}
                ) as srv:
                    stream_run(srv, fake_root, work, clients=5, tokens=5, tps=200)  # warm-up
                    _say(f"baseline load {load}")
                    la = os.getloadavg()
                    base = stream_run(srv, fake_root, work, **_kw(load))
                    out["baseline"] = summary(base, la)
                    _say(f"baseline relay {base['relay_ms']} ack {base['ack_ms']}")
                    _say("the same load with a backup started at the same moment")
                    la = os.getloadavg()
                    t_start = time.monotonic()
                    proc = run_backup(url, work / "loaded")
                    done: dict[str, Any] = {}

                    def wait_backup() -> None:
                        done["out"] = proc.communicate()
                        done["t"] = time.monotonic()

                    waiter = threading.Thread(target=wait_backup)
                    waiter.start()
                    during = stream_run(srv, fake_root, work, **_kw(load))
                    t_end_streams = time.monotonic()
                    waiter.join()
                    stdout, stderr = done["out"]
                    t_backup_end = done["t"]
                    assert proc.returncode == 0, stderr
                    stream_start = t_end_streams - during["stream_phase_wall_s"]
                    overlap = max(
                        0.0, min(t_end_streams, t_backup_end) - max(stream_start, t_start)
                    )
                    out["during_backup"] = summary(during, la)
                    out["loaded_backup"] = {
                        "wall_s": round(t_backup_end - t_start, 1),
                        "line": stdout,
                        "stream_phase_covered_by_backup": round(
                            overlap / during["stream_phase_wall_s"], 3
                        ),
                        "backup_covered_by_stream_phase": round(
                            overlap / (t_backup_end - t_start), 3
                        ),
                    }
                    out["server_pid_cpu_s_end"] = cpu_seconds(srv.pid)
                    _say(f"during backup relay {during['relay_ms']} ack {during['ack_ms']}")
                    _say(f"loaded backup: {stdout.strip()} ({out['loaded_backup']})")
                    _say("the same load again without a backup (noise bracket)")
                    la = os.getloadavg()
                    after = stream_run(srv, fake_root, work, **_kw(load))
                    out["baseline_after"] = summary(after, la)
                    _say(f"baseline after relay {after['relay_ms']} ack {after['ack_ms']}")
    finally:
        if not args.keep_database:
            _mysql(f"DROP DATABASE IF EXISTS {dbname}")
    write_result(args.results_dir, "backup_load", out, command)
    return 0


def _kw(load: dict[str, Any]) -> dict[str, Any]:
    return {
        "clients": load["clients"],
        "tokens": load["tokens"],
        "tps": load["tps"],
        "stagger_ms": load["stagger_ms"],
    }


if __name__ == "__main__":
    sys.exit(main())
