"""Two instances in one process: two TurnManagers on one database and one cache/broker.

Runs on SQLite + the in-process engine and on MariaDB + Redis: resume, duplicate join and
cancel of a turn that lives on the other instance, conversation delete, the sweeper
finishing a dead instance's turn, and the fence against a late owner.
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
from server.services import Services, build_services
from server.turns import Listener, TurnConfig, TurnManager
from server.turns.relay import lease_key, read_snapshot, stream_key
from store import conversations as conv_repo
from store import messages as store_messages
from store import users as users_repo
from store.cache import CacheEngine, CacheUnavailable
from tests.conftest import make_settings
from tests.support.turns import FakeOutbox, FakeUpstream

CFG = TurnConfig(
    checkpoint_seconds=0.1,
    finish_deadline=1.0,
    lease_ttl=1.0,
    lease_renew=0.2,
    sweep_seconds=0.3,
    relay_flush_seconds=0.02,
)


class Instance:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.upstream = FakeUpstream()
        self.turns = TurnManager(svc, self.upstream, CFG, cluster=True)
        self.scope = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.turns.run(task_status=task_status)


@pytest.fixture
async def pair(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Instance, Instance]]:
    settings = make_settings(backend, request, tmp_path)
    a_svc = build_services(settings)
    b_svc = build_services(settings)
    b_svc.cache = a_svc.cache  # one broker (the in-process engine is one object)
    a, b = Instance(a_svc), Instance(b_svc)
    databases = [a_svc.db, b_svc.db]
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b
        nursery.cancel_scope.cancel()
    for db in databases:
        db.dispose()
    await a_svc.cache.aclose()


async def conversation(svc: Services) -> tuple[str, str]:
    def work(c: Any) -> tuple[str, str]:
        user = users_repo.create_user(c, kind="guest")
        return user.id, conv_repo.create_conversation(c, user_id=user.id, title="t").id

    result: tuple[str, str] = await svc.db.tx(work)
    return result


def listener(outbox: FakeOutbox, rid: str = "r1") -> Listener:
    return Listener(outbox, ReplyTo(rid, "a" * 32))


async def started(inst: Instance, user: str, conv: str, *tokens: str) -> tuple[FakeOutbox, Any]:
    out = FakeOutbox()
    data = ChatSend(conversationId=conv, messageId=str(uuid.uuid4()), content="hello")
    await inst.turns.send(user_id=user, data=data, listener=listener(out))
    await inst.upstream.token(*tokens)
    await out.wait_for("chat.stream", len(tokens))
    return out, data


async def row(svc: Services, message_id: str) -> Any:
    return await svc.db.read(lambda c: store_messages.get_message(c, message_id))


async def wait_flushed(cache: CacheEngine, message_id: str, entries: int) -> None:
    with trio.fail_after(5):
        while len(await cache.lrange(stream_key(message_id), 0, -1)) < entries:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_resume_on_the_other_instance_replays_then_follows(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "A", "B", "C")
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    await wait_flushed(a.svc.cache, mid, 1)
    back = FakeOutbox()  # the client held chunk 0 and reconnected to B
    resume = ChatResume(conversationId=conv, lastMessageSeq=1, lastChunk=0)
    await b.turns.resume(user_id=user, data=resume, listener=listener(back, "r2"))
    assert back.types() == ["chat.stream", "chat.resumed"]
    assert back.of("chat.stream")[0] == {"chunk": 2, "delta": "BC", "seq": 2}
    assert (
        back.of("chat.resumed")[0]["live"] is True and back.of("chat.resumed")[0]["replayed"] == 1
    )
    await a.upstream.token("D", "E")
    await a.upstream.end()
    await back.wait_for("chat.done")
    chunks = [d["chunk"] for d in back.of("chat.stream")]
    assert chunks == sorted(set(chunks)) and chunks[-1] == 4  # no repeat, no gap
    assert "A" + back.text() == "ABCDE" == (await row(a.svc, mid)).content
    assert len(back.of("chat.done")) == 1 and back.of("chat.done")[0]["status"] == "completed"


async def test_duplicate_send_on_the_other_instance_joins(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    _out, data = await started(a, user, conv, "x", "y")
    joined = FakeOutbox()
    await b.turns.send(user_id=user, data=data, listener=listener(joined, "r2"))
    assert joined.of("chat.ack")[0]["duplicate"] is True
    await a.upstream.token("z")
    await a.upstream.end()
    await joined.wait_for("chat.done")
    assert joined.text() == "xyz" and len(joined.of("chat.done")) == 1
    assert len(a.upstream.calls) == 1 and b.upstream.calls == []  # generated once


async def test_cancel_from_the_other_instance(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "part")
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    other = str(uuid.uuid4())
    assert not await b.turns.cancel(user_id=user, conversation_id=conv, message_id=other)
    assert not await b.turns.cancel(user_id="intruder", conversation_id=conv, message_id=mid)
    assert await b.turns.cancel(user_id=user, conversation_id=conv, message_id=mid)
    await out.wait_for("chat.done")
    assert out.of("chat.done")[0]["status"] == "cancelled"
    assert (await row(a.svc, mid)).status == "cancelled"


async def test_deleting_the_conversation_on_the_other_instance_stops_its_turn(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "part")
    await b.turns.cancel_conversation(conv)
    await out.wait_for("chat.done")
    assert out.of("chat.done")[0]["status"] == "cancelled"


async def test_a_dead_instance_turn_is_finished_by_the_survivor(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, data = await started(a, user, conv, "one ", "two ")
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    await wait_flushed(a.svc.cache, mid, 1)
    follower = FakeOutbox()  # following on B before A dies
    resume = ChatResume(conversationId=conv, lastMessageSeq=1, lastChunk=-1)
    await b.turns.resume(user_id=user, data=resume, listener=listener(follower, "r2"))
    await a.upstream.token("three")
    await wait_flushed(a.svc.cache, mid, 2)

    class Dead:  # A's database calls fail from now on: nothing it writes lands
        async def tx(self, _work: Any) -> Any:
            raise RuntimeError("killed")

        read = tx

    a.svc.db = Dead()  # type: ignore[assignment]
    a.scope.cancel()  # A stops: no more lease renewals, no end reaches the broker
    with trio.fail_after(10):
        await follower.wait_for("chat.done")
    done = follower.of("chat.done")[0]
    assert done["status"] == "interrupted" and done["lastChunk"] == 2
    stored = await row(b.svc, mid)
    assert stored.status == "interrupted"
    assert stored.content == follower.text() == "one two three"  # the buffer beat the checkpoint
    assert await b.svc.cache.get(lease_key(mid)) is None
    # The conversation is usable again, on the survivor.
    again = FakeOutbox()
    nxt = data.model_copy(update={"messageId": str(uuid.uuid4()), "content": "and now?"})
    await b.turns.send(user_id=user, data=nxt, listener=listener(again))
    assert again.of("chat.ack")[0]["duplicate"] is False


async def test_a_late_owner_is_fenced(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "kept")
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    await wait_flushed(a.svc.cache, mid, 1)
    # B took A for dead (say, a long pause): it stored the turn interrupted.
    assert await b.turns.sweeper._finish_orphan(await row(b.svc, mid))
    await a.upstream.token(" more")
    await a.upstream.end()
    await out.wait_for("chat.done")
    assert out.of("chat.done")[-1]["status"] == "interrupted"  # the stored end stands
    stored = await row(a.svc, mid)
    assert (stored.status, stored.content) == ("interrupted", "kept")


async def test_resume_of_a_turn_not_followable_is_refused_like_any_other(
    pair: tuple[Instance, Instance],
) -> None:
    _a, b = pair
    with pytest.raises(ProtocolError) as err:
        resume = ChatResume(conversationId=str(uuid.uuid4()), lastMessageSeq=0)
        await b.turns.resume(user_id="nobody", data=resume, listener=listener(FakeOutbox()))
    assert err.value.code is ErrorCode.NOT_FOUND


class _NoBroker:
    """The cache as B sees it while Redis is unreachable from B."""

    def __init__(self, inner: CacheEngine) -> None:
        self._inner = inner

    def subscribe(self, *_channels: str, **_kw: Any) -> Any:
        raise CacheUnavailable("redis unavailable (test)")

    async def lrange(self, *_a: Any) -> list[bytes]:
        raise CacheUnavailable("redis unavailable (test)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_follower_without_the_broker_finishes_from_the_database(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "held ", "by ")
    b.svc.cache = _NoBroker(a.svc.cache)  # type: ignore[assignment]
    back = FakeOutbox()
    resume = ChatResume(conversationId=conv, lastMessageSeq=1, lastChunk=-1)
    await b.turns.resume(user_id=user, data=resume, listener=listener(back, "r2"))
    assert back.of("chat.resumed")[0]["live"] is True  # answered at once, even so
    await a.upstream.token("all")
    await a.upstream.end()
    with trio.fail_after(10):
        await back.wait_for("chat.done")
    assert back.text() == "held by all" == out.text()
    assert back.of("chat.done")[0]["status"] == "completed"


async def test_without_redis_the_process_sweeps_leftovers_at_start(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The embedded default: one process owns every turn, so a turn left streaming by a
    process that died ends interrupted when the next one starts (text kept)."""
    from server.app import create_app
    from server.settings import Settings
    from tests.conftest import TEST_JWT_KEYS

    settings = Settings(
        env="test", database_url=sqlite_url, jwt_keys=TEST_JWT_KEYS, data_dir=tmp_path
    )  # type: ignore[call-arg]
    svc = build_services(settings)
    user, conv = await conversation(svc)

    def leftover(c: Any) -> str:
        res = store_messages.begin_turn(
            c, user_id=user, conversation_id=conv, client_message_id=str(uuid.uuid4()), content="hi"
        )
        assert res.assistant_message is not None
        store_messages.checkpoint_many(c, [(res.assistant_message.id, "half an answ", 3)])
        return res.assistant_message.id

    mid = await svc.db.tx(leftover)
    assert (await row(svc, mid)).status == "streaming"
    app = create_app(svc)
    async with app.test_app():
        swept = await row(svc, mid)
        assert (swept.status, swept.content, swept.finish_reason) == (
            "interrupted",
            "half an answ",
            "interrupted",
        )


class _FlakyFlush:
    """A's cache, whose next ``fail`` pipeline sends fail (Redis hiccups)."""

    def __init__(self, inner: CacheEngine) -> None:
        self._inner = inner
        self.fail = 0

    def pipeline(self) -> Any:
        pipe = self._inner.pipeline()
        if self.fail > 0:
            self.fail -= 1

            async def broken() -> None:
                pipe._take()
                raise CacheUnavailable("redis unavailable (test)")

            pipe.execute = broken  # type: ignore[method-assign]
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_failed_flush_is_sent_with_the_next(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    user, conv = await conversation(a.svc)
    out, _ = await started(a, user, conv, "one ")
    mid = out.of("chat.ack")[0]["assistantMessageId"]
    await wait_flushed(a.svc.cache, mid, 1)
    flaky = _FlakyFlush(a.svc.cache)
    a.svc.cache = flaky  # type: ignore[assignment]
    flaky.fail = 2
    await a.upstream.token("two ")
    await out.wait_for("chat.stream", 2)
    with trio.fail_after(5):
        while flaky.fail:  # noqa: ASYNC110 - the two failing flushes went by
            await trio.sleep(0.01)
    await a.upstream.token("three")
    await a.upstream.end()
    await out.wait_for("chat.done")  # the local listener's: the broker's end follows it
    with trio.fail_after(5):
        while (snap := await read_snapshot(b.svc.cache, mid)).end is None:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert snap.text == "one two three"  # whole, in order, the end after every delta
