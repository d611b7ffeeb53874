"""The turns package without sockets: a fake outbox, a fake upstream, a real SQLite store.

Each test drives the upstream token by token, so what the listeners receive and what
the database holds can be checked at every step.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import ChatResume, ChatSend
from protocol.outgoing import ReplyTo
from server.llm.base import ChatMessage
from server.services import Services, build_services
from server.settings import Settings
from server.turns import Listener, TurnConfig, TurnManager
from store import conversations as conv_repo
from store import messages as store_messages
from store import users as users_repo
from tests.conftest import TEST_JWT_KEYS
from tests.support.turns import FakeOutbox, FakeUpstream


@pytest.fixture
async def svc(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(
        env="test", database_url=sqlite_url, jwt_keys=TEST_JWT_KEYS, data_dir=tmp_path
    )  # type: ignore[call-arg]
    services = build_services(settings)
    yield services
    await services.aclose()


@pytest.fixture
async def harness(svc: Services) -> AsyncIterator[tuple[TurnManager, FakeUpstream]]:
    upstream = FakeUpstream()
    turns = TurnManager(svc, upstream, TurnConfig(checkpoint_seconds=0.05, finish_deadline=1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(turns.run)
        yield turns, upstream
        nursery.cancel_scope.cancel()


async def conversation(svc: Services) -> tuple[str, str]:
    def work(c: Any) -> tuple[str, str]:
        user = users_repo.create_user(c, kind="guest")
        return user.id, conv_repo.create_conversation(c, user_id=user.id, title="t").id

    result: tuple[str, str] = await svc.db.tx(work)
    return result


def send_data(conv: str, content: str = "hello", mid: str | None = None) -> ChatSend:
    return ChatSend(conversationId=conv, messageId=mid or str(uuid.uuid4()), content=content)


def listener(outbox: FakeOutbox, rid: str = "r1") -> Listener:
    return Listener(outbox, ReplyTo(rid, "a" * 32))


async def stored(svc: Services, message_id: str) -> Any:
    return await svc.db.read(lambda c: store_messages.get_message(c, message_id))


async def test_start_streams_then_done_after_the_stored_end(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv), listener=listener(out))
    [ack] = out.of("chat.ack")
    assert ack["duplicate"] is False and ack["assistantSeq"] == ack["userSeq"] + 1 == 2
    await upstream.token("Hel", "lo")
    await out.wait_for("chat.stream", 2)
    assert upstream.calls[0][-1] == ChatMessage("user", "hello")
    assert [(d["chunk"], d["delta"]) for d in out.of("chat.stream")] == [(0, "Hel"), (1, "lo")]
    await upstream.end()
    await out.wait_for("chat.done")
    [done] = out.of("chat.done")
    assert (done["status"], done["lastChunk"], done["finishReason"]) == ("completed", 1, "stop")
    row = await stored(svc, ack["assistantMessageId"])
    assert (row.content, row.status, row.chunk_count) == ("Hello", "completed", 2)
    assert conv not in turns.live
    assert svc.metrics.turns.labels("completed")._value.get() == 1


async def test_duplicate_joins_live_then_replays_stored(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    first, second, third = FakeOutbox(), FakeOutbox(), FakeOutbox()
    data = send_data(conv)
    await turns.send(user_id=user, data=data, listener=listener(first))
    await upstream.token("a", "b")
    await first.wait_for("chat.stream", 2)
    await turns.send(user_id=user, data=data, listener=listener(second, "r2"))
    assert second.types() == ["chat.ack", "chat.stream"]
    assert second.of("chat.ack")[0]["duplicate"] is True
    assert second.of("chat.stream")[0] == {"chunk": 1, "delta": "ab", "seq": 2}
    await upstream.token("c")
    await upstream.end()
    for out in (first, second):
        await out.wait_for("chat.done")
        assert out.text() == "abc" and len(out.of("chat.done")) == 1
    assert len(upstream.calls) == 1  # never generated twice
    await turns.send(user_id=user, data=data, listener=listener(third, "r3"))
    assert third.types() == ["chat.ack", "chat.stream", "chat.done"]
    assert third.text() == "abc" and third.of("chat.done")[0]["lastChunk"] == 2


async def test_busy_and_duplicate_content_are_refused_before_anything_is_stored(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv, "one"), listener=listener(out))
    with pytest.raises(ProtocolError) as busy:
        await turns.send(user_id=user, data=send_data(conv, "two"), listener=listener(FakeOutbox()))
    assert busy.value.code is ErrorCode.CONVERSATION_BUSY and busy.value.retry_after_ms
    await upstream.end()
    await out.wait_for("chat.done")
    with pytest.raises(ProtocolError) as dup:  # same content again within the window
        await turns.send(user_id=user, data=send_data(conv, "one"), listener=listener(FakeOutbox()))
    assert dup.value.code is ErrorCode.DUPLICATE_CONTENT
    last = await svc.db.read(lambda c: conv_repo.get_conversation(c, conv, user_id=user))
    assert last is not None and last.last_seq == 2  # one turn: two rows, nothing else


async def test_breaker_open_fails_fast(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    upstream.unavailable = 12.5
    with pytest.raises(ProtocolError) as err:
        await turns.send(user_id=user, data=send_data(conv), listener=listener(FakeOutbox()))
    assert err.value.code is ErrorCode.UPSTREAM_UNAVAILABLE and err.value.retry_after_ms == 12500
    assert upstream.calls == []
    last = await svc.db.read(lambda c: conv_repo.get_conversation(c, conv, user_id=user))
    assert last is not None and last.last_seq == 0


async def test_cancel_keeps_the_partial_text(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv), listener=listener(out))
    await upstream.token("par", "tial")
    await out.wait_for("chat.stream", 2)
    ack = out.of("chat.ack")[0]
    assert not await turns.cancel(
        user_id="someone-else", conversation_id=conv, message_id=ack["assistantMessageId"]
    )
    assert await turns.cancel(
        user_id=user, conversation_id=conv, message_id=ack["assistantMessageId"]
    )
    await out.wait_for("chat.done")
    assert out.of("chat.done")[0]["status"] == "cancelled"
    row = await stored(svc, ack["assistantMessageId"])
    assert (row.content, row.status) == ("partial", "cancelled")


async def test_resume_mid_turn_replays_the_missing_chunks_then_goes_live(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv), listener=listener(out))
    await upstream.token("0", "1", "2", "3")
    await out.wait_for("chat.stream", 4)
    turns.detach(out)  # the connection went away holding chunks 0 and 1
    back = FakeOutbox()
    resume = ChatResume(conversationId=conv, lastMessageSeq=1, lastChunk=1)
    await turns.resume(user_id=user, data=resume, listener=listener(back, "r9"))
    assert back.types() == ["chat.stream", "chat.resumed"]
    assert back.of("chat.stream")[0] == {"chunk": 3, "delta": "23", "seq": 2}
    assert back.of("chat.resumed")[0] == {
        "conversationId": conv,
        "replayed": 1,
        "live": True,
        "reset": False,
    }
    await upstream.token("4")
    await upstream.end()
    await back.wait_for("chat.done")
    assert "01" + back.text() == "01234"
    assert len(out.of("chat.stream")) == 4 and out.of("chat.done") == []  # detached
    other = FakeOutbox()
    with pytest.raises(ProtocolError) as err:  # not the caller's conversation
        await turns.resume(user_id="nobody", data=resume, listener=listener(other))
    assert err.value.code is ErrorCode.NOT_FOUND


async def test_checkpoint_stores_the_text_while_it_grows(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv), listener=listener(out))
    await upstream.token("check", "point")
    await out.wait_for("chat.stream", 2)
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    with trio.fail_after(5):
        while (row := await stored(svc, mid)).content != "checkpoint":  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert (row.status, row.chunk_count) == ("streaming", 2)
    await upstream.end()
    await out.wait_for("chat.done")


async def test_upstream_failure_after_tokens_ends_failed_with_the_text(
    svc: Services, harness: tuple[TurnManager, FakeUpstream]
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    out = FakeOutbox()
    await turns.send(user_id=user, data=send_data(conv), listener=listener(out))
    await upstream.token("so far")
    await upstream.fail()
    await out.wait_for("chat.done")
    assert out.types()[-2:] == ["error", "chat.done"]
    assert out.of("error")[0]["code"] == "UPSTREAM_ERROR"
    assert out.of("chat.done")[0]["status"] == "failed"
    row = await stored(svc, out.of("chat.ack")[0]["assistantMessageId"])
    assert (row.content, row.status) == ("so far", "failed")
    assert svc.metrics.errors.labels("UPSTREAM", "UPSTREAM_ERROR")._value.get() == 1


async def test_unstored_end_sends_server_error_and_no_done(
    svc: Services, harness: tuple[TurnManager, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    turns, upstream = harness
    user, conv = await conversation(svc)
    first, second = FakeOutbox(), FakeOutbox()
    data = send_data(conv)
    await turns.send(user_id=user, data=data, listener=listener(first))
    await turns.send(user_id=user, data=data, listener=listener(second, "r2"))  # joins

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(store_messages, "finish_message", broken)
    await upstream.token("lost?")
    await upstream.end()
    for out in (first, second):
        await out.wait_for("error")
        assert out.of("error")[0]["code"] == "SERVER_ERROR" and out.of("chat.done") == []
    assert svc.metrics.errors.labels("SERVER", "SERVER_ERROR")._value.get() == 1  # one event
    assert conv not in turns.live
    row = await stored(svc, first.of("chat.ack")[0]["assistantMessageId"])
    assert row.status == "streaming"  # left for recovery, never reported done
