"""The floor: a bare WebSocket relay on Parley's own stack, for ratios.

Hypercorn (trio worker) + Quart (quart-trio) + httpx, exactly as Parley runs
them, but with no auth, no store, no cache, no protocol package, no outbox,
no metrics. It speaks just enough of Parley's wire format for
``benchmarks/loadgen.py`` to drive it unchanged:

- ``POST /api/v1/auth/guest`` → 201 ``{"accessToken": <random>}`` (not checked);
- ``POST /api/v1/conversations`` → 201 ``{"id": <uuid>}`` (not stored);
- ``/ws``: accepts ``chat.v1``, sends ``session.ready``; on ``chat.send`` it sends
  ``chat.ack``, POSTs the content to the upstream (OpenAI streaming), and sends one
  ``chat.stream`` frame per upstream delta *from the same task* (no writer task,
  no queue, no coalescing), then ``chat.done``.

With ``--mysql-database NAME`` (the durable floor): before the ``chat.ack`` each
``chat.send`` stores two rows (the message and its reply's placeholder) with bare
pymysql, in a worker thread, and commits; so ack, then upstream call, in Parley's order.
With ``--sqlite-path FILE`` instead, the same rows go to a SQLite file through the
standard library's ``sqlite3``, with the pragmas Parley's embedded store sets (WAL,
``synchronous=NORMAL``): the durable floor of the SQLite backend. Sends that arrive
while a transaction runs share the next one (group commit, up to 64, one transaction at
a time: as Parley's turn starts), so a burst of sends costs a few transactions, not one
each.

Run::

    python benchmarks/floor.py --port 8100 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pymysql
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request, websocket
from quart_trio import QuartTrio

_TABLE = (
    "CREATE TABLE IF NOT EXISTS floor_messages (id CHAR(36) PRIMARY KEY,"
    " conversation_id CHAR(36) NOT NULL, role VARCHAR(16) NOT NULL, content MEDIUMTEXT NOT NULL)"
)


@dataclass(eq=False)
class _Send:
    conv: str
    content: str
    reply_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


def _mysql(database: str) -> tuple[Any, str]:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=database, autocommit=False)
    return conn, "%s"


def _sqlite(path: str) -> tuple[Any, str]:
    # Parley's pragmas (store/db.py); a transaction is begun by the first INSERT
    conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
    for pragma in ("journal_mode=WAL", "busy_timeout=10000", "synchronous=NORMAL"):
        conn.execute("PRAGMA " + pragma)
    return conn, "?"


class _Durable:
    """Sends stored in group-committed transactions on a bare driver (pymysql or sqlite3),
    one at a time, in a worker thread, on one connection opened at start (as a warm pool
    would hand it over). ``spawn`` starts a task beside the requests (a flush must not
    belong to the send that started it)."""

    BATCH_MAX = 64  # Parley's turn starts' batch

    def __init__(
        self, connect: Callable[[], tuple[Any, str]], spawn: Callable[[Callable[[], Any]], None]
    ) -> None:
        self.spawn = spawn
        self.limiter = trio.CapacityLimiter(1)  # the one connection, one thread at a time
        self.pending: list[_Send] = []
        self.flushing = False
        self.conn, mark = connect()
        self.row = f"({mark}, {mark}, 'user', {mark}), ({mark}, {mark}, 'assistant', '')"
        cur = self.conn.cursor()
        cur.execute(_TABLE)
        cur.close()
        self.conn.commit()

    def _store(self, batch: list[_Send]) -> None:
        conn = self.conn
        values: list[str] = []
        for s in batch:
            values += [str(uuid.uuid4()), s.conv, s.content, s.reply_id, s.conv]
        rows = ", ".join([self.row] * len(batch))
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO floor_messages VALUES " + rows, values)
            cur.close()
            conn.commit()
        except Exception:
            conn.rollback()
            raise

    async def store(self, conv: str, content: str) -> str:
        send = _Send(conv, content)
        self.pending.append(send)
        if not self.flushing:
            self.flushing = True
            self.spawn(self._flush)
        await send.done.wait()
        if send.error is not None:
            raise send.error
        return send.reply_id

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.BATCH_MAX]
                del self.pending[: self.BATCH_MAX]
                try:
                    await trio.to_thread.run_sync(self._store, batch, limiter=self.limiter)
                except Exception as exc:
                    for s in batch:
                        s.error = exc
                for s in batch:
                    s.done.set()
        finally:
            self.flushing = False


def create_app(
    upstream: str, database: str | None = None, sqlite_path: str | None = None
) -> QuartTrio:
    app = QuartTrio("floor")
    durable: _Durable | None = None
    if database:
        durable = _Durable(functools.partial(_mysql, database), app.add_background_task)
    elif sqlite_path:
        durable = _Durable(functools.partial(_sqlite, sqlite_path), app.add_background_task)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0),
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
    )
    url = upstream.rstrip("/") + "/chat/completions"

    @app.post("/api/v1/auth/guest")
    async def guest() -> tuple[dict[str, str], int]:
        await request.get_data()  # an unread body stalls the next request on keep-alive
        return {"accessToken": uuid.uuid4().hex}, 201

    @app.post("/api/v1/conversations")
    async def conversation() -> tuple[dict[str, str], int]:
        await request.get_data()
        return {"id": str(uuid.uuid4())}, 201

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept(subprotocol="chat.v1")
        await websocket.send('{"type":"session.ready","traceId":"0","data":{}}')
        while True:
            frame = orjson.loads(await websocket.receive())
            if frame.get("type") != "chat.send":
                continue
            rid, data = frame.get("requestId"), frame["data"]
            conv = data["conversationId"]
            if durable is not None:
                mid = await durable.store(conv, data["content"])
            else:
                mid = str(uuid.uuid4())
            head = {"conversationId": conv, "messageId": mid, "seq": 2}
            await websocket.send(
                orjson.dumps(
                    {
                        "type": "chat.ack",
                        "requestId": rid,
                        "data": {**head, "userSeq": 1, "assistantMessageId": mid},
                    }
                ).decode()
            )
            body = {
                "model": "fake",
                "stream": True,
                "messages": [{"role": "user", "content": data["content"]}],
            }
            chunk = -1
            async with client.stream("POST", url, json=body) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = orjson.loads(line[6:])
                    choices = obj.get("choices") or [{}]
                    delta = choices[0].get("delta", {}).get("content")
                    if not delta:
                        continue
                    chunk += 1
                    await websocket.send(
                        orjson.dumps(
                            {
                                "type": "chat.stream",
                                "requestId": rid,
                                "data": {**head, "chunk": chunk, "delta": delta},
                            }
                        ).decode()
                    )
            await websocket.send(
                orjson.dumps(
                    {
                        "type": "chat.done",
                        "requestId": rid,
                        "data": {**head, "status": "completed", "lastChunk": chunk},
                    }
                ).decode()
            )

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--upstream", required=True, help="OpenAI base URL ending in /v1")
    durable = p.add_mutually_exclusive_group()
    durable.add_argument("--mysql-database", help="store each send first (the durable floor)")
    durable.add_argument("--sqlite-path", help="the same, in this SQLite file")
    a = p.parse_args(argv)
    if not a.host.startswith("127."):
        p.error("loopback only")
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    cfg = Config()
    cfg.bind = [f"{a.host}:{a.port}"]
    cfg.worker_class = "trio"
    cfg.backlog = 2048  # as Parley (server/ws/listener.py); Hypercorn's default is 100
    cfg.accesslog = None
    cfg.graceful_timeout = 1.0
    cfg.websocket_ping_interval = 25.0
    app = create_app(a.upstream, a.mysql_database, a.sqlite_path)

    async def run() -> None:
        stop = trio.Event()

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    stop.set()
                    return

        async with trio.open_nursery() as n:
            n.start_soon(signals)
            print(f"floor listening on {a.host}:{a.port} pid={os.getpid()}", flush=True)
            await serve(app, cfg, shutdown_trigger=stop.wait)
            n.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
