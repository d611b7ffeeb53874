"""The rules of a turn over real sockets: busy, cancel, truncation, closed tabs, idempotency,
duplicates, resume."""

from __future__ import annotations

import uuid

import trio

from tests.support.live import LiveServer
from tests.support.wsclient import Rest, connect

LIVE_SETTINGS = {"sim_fault_injection": True}  # the [[sim:...]] prefixes below
SLOW = "[[sim:tokens=60,tps=40]] "  # 1.5 s of streaming


async def setup(live: LiveServer) -> tuple[Rest, str, str]:
    rest = Rest(live.http_url)
    reg = await rest.register()
    token = reg["accessToken"]
    return rest, token, await rest.conversation(token)


def send_data(conv: str, content: str, mid: str | None = None) -> dict:
    return {"conversationId": conv, "messageId": mid or str(uuid.uuid4()), "content": content}


async def test_second_send_is_busy_then_allowed(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "first"), request_id="a")
        ack = await ws.recv_type("chat.ack")
        await ws.send("chat.send", send_data(conv, "second"), request_id="b")
        while True:
            f = await ws.recv()
            if f["type"] == "error":
                break
        assert f["requestId"] == "b" and f["data"]["code"] == "CONVERSATION_BUSY"
        assert f["data"]["retryable"] is True and f["data"]["retryAfterMs"] > 0
        done = await ws.recv_type("chat.done")
        assert done["data"]["messageId"] == ack["data"]["assistantMessageId"]
        after = await ws.turn(conv, "second")
        assert after.done is not None and after.ack["data"]["userSeq"] == 3
    assert [m["seq"] for m in await rest.history(token, conv)] == [1, 2, 3, 4]


async def test_cancel_keeps_partial_text(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "cancel me"))
        ack = await ws.recv_type("chat.ack")
        streamed = [await ws.recv_type("chat.stream") for _ in range(3)]
        await ws.send(
            "chat.cancel", {"conversationId": conv, "messageId": ack["data"]["assistantMessageId"]}
        )
        while True:
            f = await ws.recv()
            if f["type"] == "chat.stream":
                streamed.append(f)
            elif f["type"] == "chat.done":
                break
    assert f["data"]["status"] == "cancelled" and f["data"]["finishReason"] == "cancelled"
    text = "".join(s["data"]["delta"] for s in streamed)
    assert f["data"]["lastChunk"] == streamed[-1]["data"]["chunk"]
    history = await rest.history(token, conv)
    assert history[1]["status"] == "cancelled" and history[1]["content"] == text
    assert len(text) > 0


async def test_truncated_at_4096_tokens(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        result = await ws.turn(conv, "[[sim:tokens=5000,tps=100000]] a long one", timeout=60)
    assert result.done is not None
    done = result.done["data"]
    assert done["status"] == "truncated" and done["finishReason"] == "length"
    assert done["usage"]["outputTokens"] == 4096 and done["lastChunk"] == 4095
    history = await rest.history(token, conv)
    assert history[1]["status"] == "truncated" and history[1]["content"] == result.text


async def test_closed_tab_does_not_stop_the_turn(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "keep going"))
        await ws.recv_type("chat.ack")
        await ws.recv_type("chat.stream")
    # the socket is gone; the answer still completes and is stored
    with trio.fail_after(15):
        while True:
            history = await rest.history(token, conv)
            if history[1]["status"] != "streaming":
                break
            await trio.sleep(0.1)
    assert history[1]["status"] == "completed"
    assert len(history[1]["content"].split()) == 60


async def test_checkpoints_while_streaming(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, "[[sim:tokens=80,tps=40]] slow"))
        await ws.recv_type("chat.ack")
        await trio.sleep(1.2)
        mid = (await rest.history(token, conv))[1]
        assert mid["status"] == "streaming" and mid["content"], "nothing checkpointed"
        done = await ws.recv_type("chat.done", timeout=10)
    final = (await rest.history(token, conv))[1]
    assert final["content"].startswith(mid["content"]) and len(final["content"]) > len(
        mid["content"]
    )
    assert done["data"]["status"] == "completed"


async def test_idempotency_conflict_and_duplicate_content(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    mid = str(uuid.uuid4())
    async with connect(live.ws_url, token) as ws:
        first = await ws.turn(conv, "hello there", message_id=mid)
        assert first.done is not None
        conflict = await ws.turn(conv, "other words", message_id=mid)
        assert conflict.errors[0]["data"]["code"] == "IDEMPOTENCY_CONFLICT"
        dup = await ws.turn(conv, "hello there")  # new messageId, same content, within 10 s
        assert dup.errors[0]["data"]["code"] == "DUPLICATE_CONTENT"
        again = await ws.turn(conv, "hello there", message_id=mid)
        assert again.ack["data"]["duplicate"] is True and again.text == first.text
    assert len(await rest.history(token, conv)) == 2


async def test_duplicate_joins_live_turn(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    mid = str(uuid.uuid4())
    async with connect(live.ws_url, token) as a, connect(live.ws_url, token) as b:
        await a.send("chat.send", send_data(conv, SLOW + "join me", mid))
        await a.recv_type("chat.ack")
        await a.recv_type("chat.stream")
        joined = await b.turn(conv, SLOW + "join me", message_id=mid)
        original = await a.recv_type("chat.done")
    assert joined.ack["data"]["duplicate"] is True
    assert joined.done is not None
    assert joined.done["data"]["lastChunk"] == original["data"]["lastChunk"]
    history = await rest.history(token, conv)
    assert joined.text == history[1]["content"] and len(history) == 2


async def test_resume_replays_missing_messages_and_chunks(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        first = await ws.turn(conv, "one")
        await ws.send("chat.send", send_data(conv, SLOW + "two"))
        await ws.recv_type("chat.ack")
        got = [await ws.recv_type("chat.stream") for _ in range(2)]
    held = got[-1]["data"]["chunk"]
    # a new connection: the client holds seqs 1-3 whole and chunks 0..held of seq 4
    async with connect(live.ws_url, token) as ws2:
        await ws2.send(
            "chat.resume",
            {"conversationId": conv, "lastMessageSeq": 3, "lastChunk": held},
            request_id="res",
        )
        frames = []
        while True:
            f = await ws2.recv()
            frames.append(f)
            if f["type"] == "chat.done":
                break
    kinds = [f["type"] for f in frames]
    resumed_at = kinds.index("chat.resumed")
    resumed = frames[resumed_at]["data"]
    assert resumed["live"] is True and resumed["reset"] is False
    streams = [f for f in frames if f["type"] == "chat.stream"]
    assert streams[0]["data"]["chunk"] > held
    text = "".join(g["data"]["delta"] for g in got) + "".join(s["data"]["delta"] for s in streams)
    history = await rest.history(token, conv)
    assert history[3]["content"] == text  # nothing lost, nothing twice
    assert first.done is not None

    # resume from 0 after the fact: every message comes back whole
    async with connect(live.ws_url, token) as ws3:
        await ws3.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 0})
        replay = [await ws3.recv() for _ in range(5)]
    assert [f["type"] for f in replay] == ["chat.message"] * 4 + ["chat.resumed"]
    assert [f["data"]["seq"] for f in replay[:4]] == [1, 2, 3, 4]
    assert replay[4]["data"] == {
        "conversationId": conv,
        "replayed": 4,
        "live": False,
        "reset": False,
    }
    # a client ahead of the server is told to reload
    async with connect(live.ws_url, token) as ws4:
        await ws4.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 99})
        reset = await ws4.recv()
    assert reset["type"] == "chat.resumed" and reset["data"]["reset"] is True


async def test_three_turns_per_user_at_once(live: LiveServer) -> None:
    rest, token, _ = await setup(live)
    convs = [await rest.conversation(token) for _ in range(4)]
    async with connect(live.ws_url, token) as ws:
        for c in convs[:3]:
            await ws.send("chat.send", send_data(c, SLOW + "parallel"))
            await ws.recv_type("chat.ack")
        await ws.send("chat.send", send_data(convs[3], SLOW + "one too many"), request_id="x")
        while True:
            f = await ws.recv()
            if f["type"] == "error":
                break
        assert f["requestId"] == "x" and f["data"]["code"] == "CONVERSATION_BUSY"
        dones = set()
        while len(dones) < 3:
            d = await ws.recv_type("chat.done")
            dones.add(d["data"]["conversationId"])
    assert dones == set(convs[:3])
    assert await rest.history(token, convs[3]) == []


async def test_resuming_twice_never_doubles_frames(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "once only"))
        await ws.recv_type("chat.ack")
        first = await ws.recv_type("chat.stream")
        for rid in ("res-1", "res-2"):
            await ws.send(
                "chat.resume",
                {"conversationId": conv, "lastMessageSeq": 1, "lastChunk": first["data"]["chunk"]},
                request_id=rid,
            )
        frames = [first]
        while True:
            f = await ws.recv()
            frames.append(f)
            if f["type"] == "chat.done":
                break
    dones = [f for f in frames if f["type"] == "chat.done"]
    assert len(dones) == 1 and dones[0]["requestId"] == "res-2"
    # every chunk arrives once as a live frame (replays re-send a merged range, never a
    # live frame twice)
    live_chunks = [
        f["data"]["chunk"]
        for f in frames
        if f["type"] == "chat.stream" and f["requestId"] == "res-2"
    ]
    assert live_chunks == sorted(set(live_chunks))
    history = await rest.history(token, conv)
    assert dones[0]["data"]["lastChunk"] + 1 == len(history[1]["content"].split())


async def test_reset_with_live_turn_keeps_streaming(live: LiveServer) -> None:
    _, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "reset me"))
        await ws.recv_type("chat.ack")
    async with connect(live.ws_url, token) as ws2:
        await ws2.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 50})
        resumed = await ws2.recv_type("chat.resumed")
        assert resumed["data"] == {
            "conversationId": conv,
            "replayed": 0,
            "live": True,
            "reset": True,
        }
        done = await ws2.recv_type("chat.done")  # live frames follow the reset
        assert done["data"]["status"] == "completed"


async def test_deleting_the_conversation_cancels_its_turn(live: LiveServer) -> None:
    rest, token, conv = await setup(live)
    async with connect(live.ws_url, token) as ws:
        await ws.send("chat.send", send_data(conv, SLOW + "delete me"))
        await ws.recv_type("chat.stream")
        r = await rest.call("DELETE", f"/api/v1/conversations/{conv}", token=token)
        assert r.status_code == 204
        done = await ws.recv_type("chat.done")
    assert done["data"]["status"] == "cancelled"


async def test_replay_expired_when_the_message_is_gone(live: LiveServer) -> None:
    import sqlalchemy as sa

    from store.schema import messages

    rest, token, conv = await setup(live)
    mid = str(uuid.uuid4())
    async with connect(live.ws_url, token) as ws:
        first = await ws.turn(conv, "remember me", message_id=mid)
        assert first.done is not None
        # retention removed the rows; the cache still knows the messageId
        assert live.svc is not None
        await live.svc.db.tx(
            lambda c: c.execute(sa.delete(messages).where(messages.c.conversation_id == conv))
        )
        again = await ws.turn(conv, "remember me", message_id=mid)
    assert again.errors[0]["data"]["code"] == "REPLAY_EXPIRED"
    assert await rest.history(token, conv) == []  # nothing generated again
