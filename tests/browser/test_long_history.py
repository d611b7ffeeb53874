"""2,000 stored messages: the conversation opens, only a window of them is in the DOM, and
it scrolls while an answer streams into it. Frame times and long tasks are measured in the
page and printed (figures in docs/SPEC.md, "The web client"); no timing is asserted."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from store.db import utcnow
from store.schema import conversations, messages
from tests.browser.conftest import Pages, Served
from tests.browser.ui import (
    answer_text,
    new_conversation,
    register,
    send,
    stored_answer,
    wait_connected,
    wait_status,
    words,
)

STORED = 2000

MEASURE = """() => {
  window.__perf = {frames: [], longTasks: []};
  let last = performance.now();
  const tick = (now) => { window.__perf.frames.push(now - last); last = now;
                          if (!window.__perf.stop) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__perf.longTasks.push(e.duration);
  }).observe({type: 'longtask'});
}"""


def _fill(served: Served, user_id: str, conv_id: str) -> None:
    engine = sa.create_engine(f"sqlite:///{served.folder / 'parley-data' / 'parley.db'}")
    now = utcnow()
    para = (
        "A stored message with **some Markdown**, a list:\n\n- one\n- two\n\n"
        "and `inline code`, long enough to wrap on a narrow screen. "
    )
    rows = [
        {
            "id": str(uuid.uuid4()),
            "conversation_id": conv_id,
            "user_id": user_id,
            "seq": seq,
            "role": "user" if seq % 2 else "assistant",
            "content": f"Message {seq}. " + para * (1 + seq % 3),
            "status": "completed",
            "finish_reason": None if seq % 2 else "stop",
            "chunk_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        for seq in range(1, STORED + 1)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(messages), rows)
        conn.execute(
            sa.update(conversations)
            .where(conversations.c.id == conv_id)
            .values(last_seq=STORED, updated_at=now)
        )
    engine.dispose()


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    s = sorted(values)
    return {
        "count": len(s),
        "p50": round(s[len(s) // 2], 1),
        "p95": round(s[int(len(s) * 0.95)], 1),
        "max": round(s[-1], 1),
    }


def test_two_thousand_messages_open_and_scroll_while_streaming(
    served: Served, pages: Pages
) -> None:
    page = pages.new()
    email = register(page, served.url)
    conv = new_conversation(page)
    token = served.login(email)
    me = httpx.get(f"{served.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    _fill(served, me.json()["id"], conv)

    started = time.monotonic()
    page.reload()
    page.locator(f'.messages[data-count="{STORED}"]').wait_for(timeout=30_000)
    page.get_by_text(f"Message {STORED}.").first.wait_for()
    opened_ms = (time.monotonic() - started) * 1000
    wait_connected(page)
    # windowed: a few dozen rows in the DOM, not 2,000
    assert page.locator("article.msg").count() < 60

    page.evaluate(MEASURE)
    send(page, "[[sim:tokens=200,tps=40]] and one more")
    page.locator('article.msg-assistant[data-status="streaming"]').wait_for()
    box = page.locator(".messages")
    box.hover()
    for _ in range(25):  # scroll up through the history while the answer streams
        page.mouse.wheel(0, -900)
        time.sleep(0.04)
    assert page.get_by_text(f"Message {STORED}.").count() == 0  # scrolled away from the end
    for _ in range(40):
        page.mouse.wheel(0, 1200)
        time.sleep(0.03)
    wait_status(page, "completed", timeout=30)
    page.evaluate("() => { window.__perf.stop = true; }")
    perf: dict[str, Any] = page.evaluate("() => window.__perf")
    assert page.locator("article.msg").count() < 60
    assert page.locator(".messages").get_attribute("data-count") == str(STORED + 2)

    stored = stored_answer(served.history(token, conv, after=STORED))
    assert stored["status"] == "completed"
    assert answer_text(page) == words(stored["content"])

    frames = perf["frames"][1:]
    figures = {
        "storedMessages": STORED,
        "openMs": round(opened_ms),
        "frameMs": _stats(frames),
        "framesOver50ms": sum(1 for f in frames if f > 50),
        "longTasks": _stats(perf["longTasks"]),
        "longTaskTotalMs": round(sum(perf["longTasks"])),
    }
    print("\nlong-history figures:", json.dumps(figures))
    (served.folder / "long-history.json").write_text(json.dumps(figures, indent=2))
