"""Many instances, no lost token: real `parley serve` processes on MariaDB + a Redis of the
test's own. An instance killed -9 mid-answer, a rolling upgrade, Redis killed mid-stream,
a disconnect storm, and what must hold across instances (resume, cancel, duplicate send,
the per-user socket cap, revocation)."""

from __future__ import annotations

import contextlib
import random
import uuid
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed

from server.health import HEARTBEAT_TTL
from tests.chaos.conftest import MakeCluster
from tests.support.chatter import Chatter, Outcome
from tests.support.cluster import Cluster, RedisServer
from tests.support.wsclient import Rest, connect

pytestmark = [pytest.mark.mysql, pytest.mark.redis]

#: Short leases and sweeps so a dead instance's turns end within seconds in a test.
FAST_RECOVERY = {"PARLEY_TURN_LEASE_SECONDS": "2", "PARLEY_TURN_SWEEP_SECONDS": "0.5"}


async def stored(url: str, token: str, conv: str, seq: int) -> dict[str, Any]:
    history = await Rest(url).history(token, conv)
    [message] = [m for m in history if m["seq"] == seq]
    return message


async def user(url: str) -> tuple[str, str]:
    rest = Rest(url)
    reg = await rest.register()
    token = reg["accessToken"]
    return token, await rest.conversation(token)


def check(outcome: Outcome, message: dict[str, Any]) -> None:
    """What a user would notice: every answer whole, once, as stored."""
    assert outcome.duplicates == 0, outcome
    assert outcome.dones == 1 and outcome.done_frames <= 1, outcome
    assert message["status"] != "streaming"
    assert outcome.text == message["content"], (outcome, message)


async def test_instance_killed_mid_answer_resumes_on_the_survivor(
    redis_server: RedisServer, cluster_factory: MakeCluster
) -> None:
    env = {**FAST_RECOVERY, "PARLEY_SIM_TOKENS_PER_SECOND": "60", "PARLEY_SIM_MAX_TOKENS": "60"}
    c = cluster_factory(2, redis_url=redis_server.url, env=env)
    token, _ = await user(c.url(0))
    for run in range(10):
        victim, survivor = run % 2, 1 - run % 2
        conv = await Rest(c.url(survivor)).conversation(token)
        chatter = Chatter([c.ws_url(victim), c.ws_url(survivor)], token, conv)
        chatter._next = 0  # starts on the victim
        async with trio.open_nursery() as nursery:

            async def kill_when_streaming(chatter: Chatter = chatter, victim: int = victim) -> None:
                with trio.fail_after(20):
                    while chatter.last_chunk < 5:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                c.kill9(victim)
                await c.astart(victim)  # back on its port while the survivor recovers

            nursery.start_soon(kill_when_streaming)
            outcome = await chatter.ask(f"run {run}: a long answer please")
        assert chatter.assistant_seq is not None
        message = await stored(c.url(survivor), token, conv, chatter.assistant_seq)
        check(outcome, message)
        assert message["status"] == "interrupted" and outcome.reconnects >= 1
        # The conversation is usable again at once, on the survivor.
        again = await Chatter([c.ws_url(survivor)], token, conv).ask("and again")
        assert again.status == "completed" and again.duplicates == 0
    # The ten killed instances' sockets do not count against the user's 10 (4504): they
    # go with their instance's heartbeat (6 s), not after their own expiry (60 s).
    await trio.sleep(HEARTBEAT_TTL + 0.5)
    async with contextlib.AsyncExitStack() as stack:
        for i in range(10):
            ws = await stack.enter_async_context(connect(c.ws_url(i % 2), token))
            assert ws.received[0]["type"] == "session.ready"


async def test_rolling_upgrade_loses_nothing(
    redis_server: RedisServer, cluster_factory: MakeCluster
) -> None:
    env = {
        **FAST_RECOVERY,
        "PARLEY_SIM_TOKENS_PER_SECOND": "20",
        "PARLEY_SIM_MAX_TOKENS": "80",
        "PARLEY_DRAIN_SECONDS": "2",
        "PARLEY_DRAIN_RECONNECT_MS": "300",
    }
    c = cluster_factory(2, redis_url=redis_server.url, env=env)
    urls = [c.ws_url(0), c.ws_url(1)]
    chatters = [Chatter(urls, *await user(c.url(0))) for _ in range(10)]
    for i, ch in enumerate(chatters):
        ch._next = i % 2  # spread over both instances
    outcomes: list[Outcome] = []

    async def one(ch: Chatter) -> None:
        outcomes.append(await ch.ask("tell me a long story", timeout=90))

    async with trio.open_nursery() as nursery:
        for ch in chatters:
            nursery.start_soon(one, ch)
        await trio.sleep(1.0)
        assert await c.aterm(0) == 0  # drains: its clients move to 1 and follow there
        await c.astart(0)
        assert await c.aterm(1) == 0
        await c.astart(1)
    assert len(outcomes) == len(chatters)
    for ch, outcome in zip(chatters, [ch.out for ch in chatters], strict=True):
        assert ch.assistant_seq is not None
        check(outcome, await stored(c.url(0), ch.token, ch.conv, ch.assistant_seq))


async def test_redis_killed_mid_stream(
    redis_server: RedisServer, cluster_factory: MakeCluster
) -> None:
    env = {"PARLEY_SIM_TOKENS_PER_SECOND": "40", "PARLEY_SIM_MAX_TOKENS": "80"}
    c = cluster_factory(1, redis_url=redis_server.url, env=env)
    token, conv = await user(c.url(0))
    chatter = Chatter([c.ws_url(0)], token, conv)
    async with trio.open_nursery() as nursery:

        async def kill_redis() -> None:
            with trio.fail_after(20):
                while chatter.last_chunk < 5:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            redis_server.kill9()

        nursery.start_soon(kill_redis)
        outcome = await chatter.ask("stream through the outage")
    assert chatter.assistant_seq is not None
    message = await stored(c.url(0), token, conv, chatter.assistant_seq)
    check(outcome, message)
    assert message["status"] == "completed"  # the stream in flight finished
    rest = Rest(c.url(0))
    for path in ("/api/v1/conversations", "/api/v1/me", f"/api/v1/conversations/{conv}"):
        assert (await rest.call("GET", path, token=token)).status_code == 200
    ready = await rest.call("GET", "/readyz")
    assert ready.status_code == 200 and ready.json()["degraded"] is True
    new_conv = await rest.conversation(token)
    during = await Chatter([c.ws_url(0)], token, new_conv).ask("a new turn without Redis")
    assert during.status == "completed"
    with trio.fail_after(10):  # the gauge says so too
        while "parley_cache_degraded 1.0" not in (await rest.call("GET", "/metrics")).text:  # noqa: ASYNC110
            await trio.sleep(0.2)
    await trio.to_thread.run_sync(redis_server.start)
    with trio.fail_after(15):  # normal mode returns by itself
        while (await rest.call("GET", "/readyz")).json()["degraded"]:  # noqa: ASYNC110
            await trio.sleep(0.2)
    after = await Chatter([c.ws_url(0)], token, new_conv).ask("and after")
    assert after.status == "completed"


async def test_disconnect_storm(redis_server: RedisServer, cluster_factory: MakeCluster) -> None:
    env = {"PARLEY_SIM_TOKENS_PER_SECOND": "50", "PARLEY_SIM_MAX_TOKENS": "60"}
    c = cluster_factory(2, redis_url=redis_server.url, env=env)
    chatters = [Chatter([c.ws_url(0), c.ws_url(1)], *await user(c.url(i % 2))) for i in range(50)]

    async def one(ch: Chatter) -> None:
        await ch.ask("storm", drop_after_chunks=random.randrange(0, 50), timeout=90)

    async with trio.open_nursery() as nursery:
        for ch in chatters:
            nursery.start_soon(one, ch)
    for ch in chatters:
        assert ch.assistant_seq is not None and ch.out.reconnects >= 1
        check(ch.out, await stored(c.url(0), ch.token, ch.conv, ch.assistant_seq))


async def frames_until(ws: Any, kind: str, timeout: float = 20) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while not out or out[-1]["type"] != kind:
            out.append(await ws.recv())
    return out


async def test_across_instances(redis_server: RedisServer, cluster_factory: MakeCluster) -> None:
    env = {
        "PARLEY_SIM_TOKENS_PER_SECOND": "20",
        "PARLEY_SIM_MAX_TOKENS": "400",
        "PARLEY_WS_MAX_CONNECTIONS_PER_USER": "3",
    }
    c: Cluster = cluster_factory(2, redis_url=redis_server.url, env=env)
    token, conv = await user(c.url(0))
    mid = str(uuid.uuid4())
    send = {"conversationId": conv, "messageId": mid, "content": "hello"}
    async with connect(c.ws_url(0), token) as a:
        await a.send("chat.send", send)
        a_head = await frames_until(a, "chat.ack")
        assistant = a_head[-1]["data"]["assistantMessageId"]
        a_head += await frames_until(a, "chat.stream")
        # Resume live on B of the turn generating on A: exact chunks, no gap, no repeat.
        async with connect(c.ws_url(1), token) as b:
            await b.send("chat.resume", {"conversationId": conv, "lastMessageSeq": 1})
            got = await frames_until(b, "chat.resumed")
            assert got[-1]["data"]["live"] is True
            # A duplicate send on B joins the same answer.
            async with connect(c.ws_url(1), token) as dup:
                await dup.send("chat.send", send)
                joined = await frames_until(dup, "chat.ack")
                assert joined[-1]["data"]["duplicate"] is True
                assert joined[-1]["data"]["assistantMessageId"] == assistant
                # The per-user cap counts sockets on both instances: 3 open, the 4th is refused.
                with pytest.raises(ConnectionClosed) as refused:
                    async with connect(c.ws_url(0), token, ready=False) as fourth:
                        await fourth.recv()
                assert refused.value.reason.code == 4504
                # Cancel from B: the owner (A) cancels, everyone gets the one chat.done.
                await b.send("chat.cancel", {"conversationId": conv, "messageId": assistant})
                tail = await frames_until(b, "chat.done")
                assert tail[-1]["data"]["status"] == "cancelled"
                dup_tail = await frames_until(dup, "chat.done")
                assert dup_tail[-1]["data"]["status"] == "cancelled"
            b_frames = got + tail
        a_frames = a_head + await frames_until(a, "chat.done")
    stream = [f["data"] for f in b_frames if f["type"] == "chat.stream"]
    chunks = [d["chunk"] for d in stream]
    assert chunks == sorted(set(chunks))
    message = await stored(c.url(1), token, conv, 2)
    assert message["status"] == "cancelled"
    assert "".join(d["delta"] for d in stream) == message["content"]
    a_text = "".join(f["data"]["delta"] for f in a_frames if f["type"] == "chat.stream")
    assert a_text == message["content"]  # the owner's own client saw it all too

    # Revocation on A closes the user's sockets on B with 4500 within 5 s.
    async with connect(c.ws_url(1), token) as b:
        r = await Rest(c.url(0)).call("POST", "/api/v1/auth/logout", token=token)
        assert r.status_code == 204
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await b.recv(timeout=5)
        assert closed.value.reason.code == 4500


def test_chatter_counts_duplicates() -> None:
    """The checker itself can fail: a chunk received twice is counted."""
    ch = Chatter(["ws://x/ws"], "t", "c")
    ch.assistant_seq = 2
    for chunk in (0, 1, 1):
        ch._apply({"type": "chat.stream", "data": {"seq": 2, "chunk": chunk, "delta": "x"}})
    assert ch.out.duplicates == 1 and "".join(ch.parts) == "xx"
    assert orjson.dumps(ch.out.errors) == b"[]"
