"""The mandatory end-to-end flow over real sockets:

register -> login -> create conversation -> WS with subprotocols -> chat.send ->
chat.ack -> chat.stream* -> chat.done -> history over REST holds both messages
with the exact streamed text -> a new connection re-sends the same messageId and
gets the same answer with duplicate: true and no new rows.
"""

from __future__ import annotations

import uuid

from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect


async def test_register_login_stream_persist_replay(live: LiveServer) -> None:
    await run_flow(live)


async def run_flow(live: LiveServer, content: str = "Tell me about trio.") -> str:
    """The whole flow; returns the streamed answer."""
    rest = Rest(live.http_url)
    reg = await rest.register()
    login = await rest.login(reg["email"], reg["password"])
    token = login["accessToken"]
    conv_id = await rest.conversation(token, "e2e")
    message_id = str(uuid.uuid4())

    async with connect(live.ws_url, token) as ws:
        assert ws.ws.subprotocol == "chat.v1"
        ready = ws.received[0]["data"]
        assert ready["userId"] == reg["user"]["id"]
        assert ready["limits"]["maxContentChars"] == 8000
        turn = await ws.turn(conv_id, content, message_id=message_id)

    assert turn.ack["data"]["duplicate"] is False
    assert turn.ack["data"]["userSeq"] == 1 and turn.ack["data"]["assistantSeq"] == 2
    assert turn.streams, "no tokens streamed"
    chunks = [f["data"]["chunk"] for f in turn.streams]
    assert chunks == sorted(chunks) and chunks[0] >= 0
    assert turn.done is not None
    done = turn.done["data"]
    assert done["status"] == "completed" and done["finishReason"] == "stop"
    assert done["lastChunk"] == chunks[-1]
    assert done["usage"]["outputTokens"] == done["lastChunk"] + 1
    assert {f["requestId"] for f in [turn.ack, *turn.streams, turn.done]} == {turn.ack["requestId"]}

    history = await rest.history(token, conv_id)
    assert [(m["seq"], m["role"], m["status"]) for m in history] == [
        (1, "user", "completed"),
        (2, "assistant", "completed"),
    ]
    assert history[0]["content"] == content
    assert history[1]["content"] == turn.text
    assert history[1]["id"] == turn.ack["data"]["assistantMessageId"]

    # a new connection re-sends the same messageId: same answer, nothing generated again
    async with connect(live.ws_url, token) as ws2:
        again = await ws2.turn(conv_id, content, message_id=message_id)
    assert again.ack["data"]["duplicate"] is True
    assert again.ack["data"]["assistantMessageId"] == turn.ack["data"]["assistantMessageId"]
    assert again.text == turn.text
    assert again.done is not None and again.done["data"]["lastChunk"] == done["lastChunk"]
    assert again.done["data"]["status"] == "completed"
    assert len(await rest.history(token, conv_id)) == 2
    return turn.text
