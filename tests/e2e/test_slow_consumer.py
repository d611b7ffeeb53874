"""A client that stops reading: past the outbox bound for the stall timeout the server
closes 4008; the turn goes on, and a resume on a new connection gets the whole answer."""

from __future__ import annotations

import socket
import uuid

import orjson
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from server.ws.connection import WsConfig
from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect

# Small bounds so a few hundred frames overflow them; a 1 s stall is enough.
LIVE_WS_CONFIG = WsConfig(stall_timeout=1.0, outbox_max_bytes=4096, outbox_max_frames=64)
LIVE_SETTINGS = {"ws_coalesce_ms": 0.0, "sim_fault_injection": True}


async def test_stalled_reader_is_closed_4008_and_loses_nothing(live: LiveServer) -> None:
    rest = Rest(live.http_url)
    reg = await rest.register()
    token = reg["accessToken"]
    conv = await rest.conversation(token)

    # A raw client with a tiny receive window that stops reading after the handshake.
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    await sock.connect(("127.0.0.1", live.port))
    stream = trio.SocketStream(sock)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(
        ws.send(
            Request(host="127.0.0.1", target="/ws", subprotocols=["chat.v1", f"bearer.{token}"])
        )
    )
    ready = False
    with trio.fail_after(5):
        while not ready:
            ws.receive_data(await stream.receive_some(4096))
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    continue
                if isinstance(event, TextMessage):
                    ready = orjson.loads(event.data)["type"] == "session.ready"
    send = {
        "type": "chat.send",
        "requestId": "big",
        "data": {
            "conversationId": conv,
            "messageId": str(uuid.uuid4()),
            "content": "[[sim:tokens=3000,tps=100000]] a long one, fast",
        },
    }
    await stream.send_all(ws.send(TextMessage(orjson.dumps(send).decode())))
    await trio.sleep(3.0)  # not reading: the server's writer blocks, the outbox overflows

    # Now read whatever arrives: it ends with the 4008 close.
    code = None
    with trio.fail_after(15):
        while code is None:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    code = event.code
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
    await stream.aclose()
    assert code == 4008

    # The turn was not stopped by the drop; a resume brings back all of it.
    async with connect(live.ws_url, token) as again:
        await again.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 1})
        frames = []
        while True:
            f = await again.recv(timeout=20)
            frames.append(f)
            if f["type"] == "chat.done" or (f["type"] == "chat.resumed" and not f["data"]["live"]):
                break
    history = await rest.history(token, conv)
    assert history[1]["status"] in ("completed", "truncated")
    got = "".join(f["data"]["delta"] for f in frames if f["type"] == "chat.stream") + "".join(
        f["data"]["content"] for f in frames if f["type"] == "chat.message"
    )
    assert got == history[1]["content"] and len(got.split()) == 3000
    metrics = (await rest.call("GET", "/metrics")).text
    assert 'parley_ws_dropped_total{reason="slow_consumer"}' in metrics
