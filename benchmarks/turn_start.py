"""What storing a turn start costs, on MariaDB and SQLite, against the bare driver's floor.

The dispatch target (``chat.send`` → upstream request, p99 ≤ 5 ms on MariaDB + Redis)
spends most of its time in one transaction: ``store.messages.begin_turns`` for one
request (lock the user and the conversation, look for the messageId and its tombstone,
count the user's streaming turns, read the history, insert the two messages, move the
sequence). This times that transaction alone, in this process, on the calling thread
and through a worker thread as Parley runs it (``Database.run_tx``), statement by
statement (``mariadb``: 8 round trips and the commit) and on the turn-start lane
(``mariadb_lane``: every read in one round trip, every write in a second, the commit),
and the floor: the least a turn start needs, written straight on pymysql (BEGIN, the
conversation locked, two messages inserted, the sequence moved, COMMIT: five round
trips). Parley's starts go to three conversations, so after the first 150 each reads a
full context (50 messages); the floor reads none.

    .venv/bin/python benchmarks/turn_start.py          # writes benchmarks/results/turn_start.json

Each case: ``--n`` starts after 30 unmeasured ones, each followed (unmeasured) by the
turn's end so the user never has too many streaming; wall p50 / p99 and CPU per start
(``time.process_time``, this process, all threads). Needs MariaDB on 127.0.0.1 (a
database of its own, dropped at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import machine  # noqa: E402
from store import conversations as store_conversations  # noqa: E402
from store import messages as store_messages  # noqa: E402
from store import users as store_users  # noqa: E402
from store.db import Database  # noqa: E402
from store.schema import metadata  # noqa: E402

RESULTS = HERE / "results"
WARMUP = 30


def _summary(walls: list[float], cpus: list[float]) -> dict[str, float]:
    walls = sorted(walls)
    return {
        "wall_p50_ms": round(walls[len(walls) // 2] * 1e3, 3),
        "wall_p99_ms": round(walls[min(len(walls) - 1, int(len(walls) * 0.99))] * 1e3, 3),
        "cpu_us_mean": round(statistics.fmean(cpus) * 1e6, 1),
    }


def _measure(n: int, start: Callable[[int], Any], end: Callable[[Any], None]) -> dict[str, float]:
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(n + WARMUP):
        t, c = time.perf_counter(), time.process_time()
        result = start(i)
        if i >= WARMUP:
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        end(result)
    return _summary(walls, cpus)


def parley_cases(url: str, n: int, *, multi_statements: bool = False) -> dict[str, Any]:
    """Parley's own transaction (``Database.run_tx``, as ``Database.tx`` runs it in its
    worker thread); ``multi_statements``: on the turn-start lane (MySQL)."""
    db = Database(url, pool_size=2)
    metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        user = store_users.create_user(conn, kind="guest")
        convs = [
            store_conversations.create_conversation(conn, user_id=user.id, title="bench").id
            for _ in range(3)
        ]

    def start(i: int) -> store_messages.BeginResult:
        request = store_messages.BeginRequest(user.id, convs[i % 3], str(uuid.uuid4()), "hello")
        result = db.run_tx(
            lambda conn: store_messages.begin_turns(conn, [request])[0],
            multi_statements=multi_statements,
        )
        assert result.outcome is store_messages.BeginOutcome.STARTED, result.outcome
        return result

    def end(result: store_messages.BeginResult) -> None:
        assert result.assistant_message is not None
        message_id = result.assistant_message.id
        db.run_tx(
            lambda conn: store_messages.finish_message(
                conn,
                message_id,
                content="an answer",
                status="completed",
                finish_reason="stop",
                chunk_count=1,
            )
        )

    out: dict[str, Any] = {"direct": _measure(n, start, end)}
    if not db.is_sqlite:  # what one start sends to the server (the 150 before it warmed up)
        sent: list[int] = []
        original = pymysql.connections.Connection._execute_command

        def counting(self: Any, command: int, sql: Any) -> Any:
            sent.append(command)
            return original(self, command, sql)

        pymysql.connections.Connection._execute_command = counting  # type: ignore[method-assign]
        try:
            result = start(0)
        finally:
            pymysql.connections.Connection._execute_command = original  # type: ignore[method-assign]
        end(result)
        out["round_trips_per_start"] = len(sent)

    async def threaded() -> dict[str, float]:
        walls: list[float] = []
        cpus: list[float] = []
        for i in range(n + WARMUP):
            t, c = time.perf_counter(), time.process_time()
            result = await trio.to_thread.run_sync(start, i)
            if i >= WARMUP:
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            end(result)
        return _summary(walls, cpus)

    out["worker_thread"] = trio.run(threaded)
    db.dispose()
    return out


def pymysql_floor(database: str, n: int) -> dict[str, float]:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=database, autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE TABLE floor_conv (id CHAR(36) PRIMARY KEY, last_seq INT) ENGINE=InnoDB")
    cur.execute(
        "CREATE TABLE floor_msg (id CHAR(36) PRIMARY KEY, conv CHAR(36), seq INT, "
        "content TEXT) ENGINE=InnoDB"
    )
    cur.execute("INSERT INTO floor_conv VALUES ('c1', 0)")

    def start(_i: int) -> None:
        cur.execute("BEGIN")
        cur.execute("SELECT id, last_seq FROM floor_conv WHERE id = 'c1' FOR UPDATE")
        row = cur.fetchone()
        assert row is not None
        seq = int(row[1])
        cur.execute(
            "INSERT INTO floor_msg VALUES (%s, 'c1', %s, 'hello'), (%s, 'c1', %s, '')",
            (str(uuid.uuid4()), seq + 1, str(uuid.uuid4()), seq + 2),
        )
        cur.execute("UPDATE floor_conv SET last_seq = %s WHERE id = 'c1'", (seq + 2,))
        cur.execute("COMMIT")

    try:
        return _measure(n, start, lambda _r: None)
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "turn_start.json")
    args = parser.parse_args()
    database = f"parley_bench_{uuid.uuid4().hex[:10]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
    cases: dict[str, Any] = {}
    try:
        url = f"mysql+pymysql://root@127.0.0.1:3306/{database}"
        cases["mariadb"] = parley_cases(url, args.n)
        cases["mariadb_lane"] = parley_cases(url, args.n, multi_statements=True)
        cases["pymysql_floor"] = pymysql_floor(database, args.n)
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
    with tempfile.TemporaryDirectory() as tmp:
        cases["sqlite"] = parley_cases(f"sqlite:///{tmp}/turns.db", args.n)
    result = {
        "command": " ".join(["benchmarks/turn_start.py", *sys.argv[1:]]),
        "machine": machine(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "n": args.n,
        "cases": cases,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(cases, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
