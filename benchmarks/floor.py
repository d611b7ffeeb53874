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
``chat.send`` stores two rows (the message and its reply's placeholder) in one
transaction with bare pymysql, in a worker thread (at most two at once, as Parley's
turn-start lane), and commits; so ack, then upstream call, in Parley's order.

Run::

    python benchmarks/floor.py --port 8100 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid

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


class _Durable:
    """One short transaction a send on bare pymysql: a connection per worker thread."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.local = threading.local()
        self.limiter = trio.CapacityLimiter(2)
        conn = self._connect()
        with conn.cursor() as cur:
            cur.execute(_TABLE)
        conn.commit()
        conn.close()

    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1", user="root", database=self.database, autocommit=False
        )

    def _store(self, conv: str, content: str) -> str:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
        user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO floor_messages VALUES (%s, %s, 'user', %s), (%s, %s, 'assistant', '')",
                (user_id, conv, content, reply_id, conv),
            )
        conn.commit()
        return reply_id

    async def store(self, conv: str, content: str) -> str:
        return await trio.to_thread.run_sync(self._store, conv, content, limiter=self.limiter)


def create_app(upstream: str, database: str | None = None) -> QuartTrio:
    app = QuartTrio("floor")
    durable = _Durable(database) if database else None
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
    p.add_argument("--mysql-database", help="store each send first (the durable floor)")
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
    cfg.accesslog = None
    cfg.graceful_timeout = 1.0
    cfg.websocket_ping_interval = 25.0
    app = create_app(a.upstream, a.mysql_database)

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
