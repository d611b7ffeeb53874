"""Conversation routes, ownership and validation, on both backends."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from store.db import utcnow
from store.schema import conversations, messages
from tests.support.api import Account, ApiClient

V1 = "/api/v1"


async def add_messages(api: ApiClient, acct: Account, conv_id: str, n: int) -> None:
    """Store n messages directly (the WebSocket path that writes them is tested elsewhere)."""

    def work(c: sa.Connection) -> None:
        now = utcnow()
        last = c.execute(
            sa.select(conversations.c.last_seq).where(conversations.c.id == conv_id)
        ).scalar_one()
        for i in range(1, n + 1):
            c.execute(
                messages.insert().values(
                    id=str(uuid.uuid4()),
                    conversation_id=conv_id,
                    user_id=acct.user["id"],
                    seq=last + i,
                    role="user" if i % 2 else "assistant",
                    content=f"message {last + i}",
                    status="completed",
                    created_at=now,
                    updated_at=now,
                )
            )
        c.execute(
            conversations.update().where(conversations.c.id == conv_id).values(last_seq=last + n)
        )

    await api.svc.db.tx(work)


async def test_create_read_rename(api: ApiClient) -> None:
    acct = await api.register()
    conv = await api.new_conversation(acct, "  First chat ")
    assert set(conv) == {"id", "title", "createdAt", "updatedAt", "lastSeq"}
    assert conv["title"] == "First chat" and conv["lastSeq"] == 0
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}", token=acct.access)
    assert r.status == 200 and r.body == conv
    r = await api.call(
        "PATCH", f"{V1}/conversations/{conv['id']}", token=acct.access, json={"title": "Renamed"}
    )
    assert r.status == 200 and r.body["title"] == "Renamed"
    r = await api.call("POST", f"{V1}/conversations", token=acct.access)
    assert r.status == 201 and r.body["title"] == "New conversation"


async def test_list_newest_first_with_cursor(api: ApiClient) -> None:
    acct = await api.register()
    made = [(await api.new_conversation(acct, f"c{i}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = f"{V1}/conversations?limit=3" + (f"&cursor={cursor}" if cursor else "")
        r = await api.call("GET", path, token=acct.access)
        assert r.status == 200
        seen += [c["id"] for c in r.body["items"]]
        cursor = r.body["nextCursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))
    r = await api.call("GET", f"{V1}/conversations?cursor=garbage!", token=acct.access)
    assert r.status == 400 and r.code == "VALIDATION_FAILED"
    r = await api.call("GET", f"{V1}/conversations?limit=0", token=acct.access)
    assert r.status == 400


async def test_soft_delete(api: ApiClient) -> None:
    acct = await api.register()
    keep = await api.new_conversation(acct, "keep")
    gone = await api.new_conversation(acct, "gone")
    await add_messages(api, acct, gone["id"], 2)
    r = await api.call("DELETE", f"{V1}/conversations/{gone['id']}", token=acct.access)
    assert r.status == 204
    r = await api.call("GET", f"{V1}/conversations", token=acct.access)
    assert [c["id"] for c in r.body["items"]] == [keep["id"]]
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/messages")]:
        r = await api.call(
            method,
            f"{V1}/conversations/{gone['id']}{path}",
            token=acct.access,
            json={"title": "x"} if method == "PATCH" else None,
        )
        assert r.status == 404 and r.code == "NOT_FOUND", (method, path)
    # soft: the rows are still there, marked
    row = await api.svc.db.read(
        lambda c: c.execute(
            sa.select(conversations.c.deleted_at).where(conversations.c.id == gone["id"])
        ).one()
    )
    assert row[0] is not None
    n = await api.svc.db.read(
        lambda c: c.execute(
            sa.select(sa.func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == gone["id"], messages.c.deleted_at.is_not(None))
        ).scalar_one()
    )
    assert n == 2


async def test_other_users_conversation_is_404_everywhere(api: ApiClient) -> None:
    owner = await api.register()
    intruder = await api.register()
    conv = await api.new_conversation(owner, "private")
    await add_messages(api, owner, conv["id"], 2)
    missing = str(uuid.uuid4())
    for cid in (conv["id"], missing, "not-a-uuid"):
        for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/messages")]:
            r = await api.call(
                method,
                f"{V1}/conversations/{cid}{path}",
                token=intruder.access,
                json={"title": "mine"} if method == "PATCH" else None,
            )
            assert r.status == 404 and r.code == "NOT_FOUND", (cid, method, path)
            assert r.body["error"]["message"] == "no such conversation"
    r = await api.call("GET", f"{V1}/conversations", token=intruder.access)
    assert r.body["items"] == []
    # nothing changed for the owner
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}", token=owner.access)
    assert r.body["title"] == "private"


async def test_guest_owns_like_anyone(api: ApiClient) -> None:
    g1, g2 = await api.guest(), await api.guest()
    conv = await api.new_conversation(g1)
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}", token=g2.access)
    assert r.status == 404
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}", token=g1.access)
    assert r.status == 200


async def test_message_history_ascending_after_seq(api: ApiClient) -> None:
    acct = await api.register()
    conv = await api.new_conversation(acct)
    await add_messages(api, acct, conv["id"], 5)
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}/messages", token=acct.access)
    assert r.status == 200
    assert [m["seq"] for m in r.body["items"]] == [1, 2, 3, 4, 5]
    assert set(r.body["items"][0]) == {
        "id",
        "conversationId",
        "seq",
        "role",
        "content",
        "status",
        "finishReason",
        "createdAt",
    }
    r = await api.call(
        "GET", f"{V1}/conversations/{conv['id']}/messages?afterSeq=2&limit=2", token=acct.access
    )
    assert [m["seq"] for m in r.body["items"]] == [3, 4]
    assert r.body["nextCursor"] == "4"
    r = await api.call(
        "GET", f"{V1}/conversations/{conv['id']}/messages?afterSeq=-1", token=acct.access
    )
    assert r.status == 400 and r.code == "VALIDATION_FAILED"
    r = await api.call(
        "GET", f"{V1}/conversations/{conv['id']}/messages?limit=abc", token=acct.access
    )
    assert r.status == 400


async def test_bad_bodies_store_nothing(api: ApiClient) -> None:
    acct = await api.register()
    conv = await api.new_conversation(acct, "original")

    async def n_convs() -> int:
        return int(
            await api.svc.db.read(
                lambda c: c.execute(
                    sa.select(sa.func.count())
                    .select_from(conversations)
                    .where(conversations.c.user_id == acct.user["id"])
                ).scalar_one()
            )
        )

    before = await n_convs()
    bad_creates: list[tuple[bytes, str]] = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"title": 5}', "title"),
        (b'{"title": "ok", "extra": 1}', "extra"),
        (b'{"title": "' + b"x" * 201 + b'"}', "title"),
        (b'{"title": "   "}', "title"),
    ]
    for raw, hint in bad_creates:
        r = await api.call("POST", f"{V1}/conversations", data=raw, token=acct.access)
        assert r.status == 400 and r.code == "VALIDATION_FAILED", raw
        assert hint in r.body["error"]["message"]
    assert await n_convs() == before
    r = await api.call("PATCH", f"{V1}/conversations/{conv['id']}", data=b"{}", token=acct.access)
    assert r.status == 400
    r = await api.call("GET", f"{V1}/conversations/{conv['id']}", token=acct.access)
    assert r.body["title"] == "original"
    r = await api.call(
        "POST", f"{V1}/conversations", data=b'{"title": "' + b"y" * 70000 + b'"}', token=acct.access
    )
    assert r.status == 413 and r.code == "PAYLOAD_TOO_LARGE"


async def test_bad_auth_bodies(api: ApiClient) -> None:
    cases = [
        {},
        {"email": "a@example.com"},
        {"email": "a@example.com", "password": "short"},
        {"email": "a@example.com", "password": "x" * 257},
        {"email": "not-an-email", "password": "12345678"},
        {"email": "a" * 250 + "@example.com", "password": "12345678"},
        {"email": "a@example.com", "password": 12345678},
        {"email": "a@example.com", "password": "12345678", "role": "admin"},
    ]
    for body in cases:
        r = await api.call("POST", f"{V1}/auth/register", json=body)
        assert r.status == 400 and r.code == "VALIDATION_FAILED", body
    r = await api.call("POST", f"{V1}/auth/register", data=b"email=a")
    assert r.status == 400
    r = await api.call("POST", f"{V1}/auth/refresh", json={"refreshToken": ""})
    assert r.status == 400


async def test_unknown_route_and_method(api: ApiClient) -> None:
    r = await api.call("GET", f"{V1}/nope")
    assert r.status == 404 and r.code == "NOT_FOUND"
    r = await api.call("PUT", f"{V1}/conversations")
    assert r.status == 405 and r.code == "METHOD_NOT_ALLOWED"
