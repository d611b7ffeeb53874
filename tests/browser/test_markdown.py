"""A Markdown answer, streamed through the `openai` provider from a small fake upstream
that answers with Markdown: headings, a table, highlighted code with a copy button, no raw
HTML. Also the conversation list (newest first, paged, rename, delete). The screenshot in
docs/ comes from here (PARLEY_UPDATE_SCREENSHOT=1 writes it; otherwise a temporary file)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BASE_ENV, ROOT, Pages, Served
from tests.browser.ui import (
    growing_states,
    new_conversation,
    register,
    send,
    stored_answer,
    wait_status,
)

ANSWER = """## Reading a file line by line

Use a `with` block so the file is **always closed**:

```python
from pathlib import Path


def count_words(path: Path) -> int:
    \"\"\"How many words the file holds.\"\"\"
    total = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            total += len(line.split())
    return total
```

| approach | memory | speed |
| --- | --- | --- |
| `for line in f` | constant | fast |
| `f.read()` | whole file | fast |

1. Open the file once.
2. Stream the lines.

<script>alert("raw HTML is never rendered")</script>
"""


def _chunks(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        out.append(text[i : i + 9])
        i += 9
    return out


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for piece in _chunks(ANSWER):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.03)
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 80}}
        for obj in (end, usage):
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def markdown_served(
    browser_ready: None, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    env = dict(BASE_ENV)
    env.update(
        PARLEY_LLM_PROVIDER="openai",
        PARLEY_LLM_BASE_URL=upstream,
        PARLEY_LLM_MODEL="fake-markdown",
        PARLEY_LLM_API_KEY="sk-test",
    )
    server = Served(tmp_path_factory.mktemp("markdown"), env).start()
    yield server
    server.stop()


def test_markdown_answer_streams_highlighted_with_copy(
    markdown_served: Served, pages: Pages, tmp_path: Path
) -> None:
    served = markdown_served
    page = pages.new(permissions=["clipboard-read", "clipboard-write"])
    email = register(page, served.url)
    conv = new_conversation(page)
    send(page, "How do I count the words of a file in Python?")
    states = growing_states(page, 3)
    assert len(states) == 3, states
    wait_status(page, "completed")
    answer = page.locator("article.msg-assistant").last
    assert answer.get_by_role("heading", name="Reading a file line by line").is_visible()
    assert answer.locator("strong", has_text="always closed").count() == 1
    code = answer.locator("pre code.hljs.language-python")
    assert code.count() == 1
    assert code.locator(".hljs-keyword").count() >= 3  # highlighted
    assert answer.locator("table th", has_text="approach").count() == 1
    assert answer.locator("ol li").count() == 2
    # raw HTML is shown neither as an element nor run
    assert answer.locator("script").count() == 0
    answer.get_by_role("button", name="Copy code").click()
    expect(answer.get_by_role("button", name="Copy code")).to_have_text("Copied")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied.startswith("from pathlib import Path") and "return total" in copied
    stored = stored_answer(served.history(served.login(email), conv))
    assert stored["content"] == ANSWER and stored["status"] == "completed"
    # rename it (the list and the title follow), then the picture for the README
    page.get_by_role("button", name="Rename New conversation").click()
    page.get_by_label("New title").fill("Counting words in Python")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("link", name="Counting words in Python")).to_be_visible()
    expect(page.get_by_role("heading", name="Counting words in Python")).to_be_visible()
    expect(answer.get_by_role("button", name="Copy code")).to_have_text("Copy")
    page.locator(".messages").evaluate("el => { el.scrollTop = 0; }")
    target = (
        ROOT / "docs" / "web-client-chat.png"
        if os.environ.get("PARLEY_UPDATE_SCREENSHOT") == "1"
        else tmp_path / "chat.png"
    )
    page.set_viewport_size({"width": 1200, "height": 900})
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


def test_conversation_list_newest_first_paged_rename_delete(
    markdown_served: Served, pages: Pages
) -> None:
    served = markdown_served
    page = pages.new()
    email = register(page, served.url)
    token = served.login(email)
    auth = {"Authorization": f"Bearer {token}"}
    ids = []
    for i in range(33):
        r = httpx.post(
            f"{served.url}/api/v1/conversations", json={"title": f"Topic {i:02d}"}, headers=auth
        )
        assert r.status_code == 201
        ids.append(r.json()["id"])
    page.reload()
    links = page.locator(".conv-link")
    expect(links).to_have_count(30)  # the first page
    assert links.first.inner_text() == "Topic 32"  # newest first
    page.get_by_role("button", name="Show older conversations").click()
    expect(links).to_have_count(33)
    assert links.last.inner_text() == "Topic 00"
    expect(page.get_by_role("button", name="Show older conversations")).to_have_count(0)
    # delete one, with a confirmation step
    page.get_by_role("button", name="Delete Topic 31").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(links).to_have_count(32)
    gone = httpx.get(f"{served.url}/api/v1/conversations/{ids[31]}", headers=auth)
    assert gone.status_code == 404
    # rename with the keyboard alone
    page.get_by_role("button", name="Rename Topic 30").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("Renamed topic")
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Renamed topic")).to_be_visible()
    r = httpx.get(f"{served.url}/api/v1/conversations/{ids[30]}", headers=auth)
    assert r.json()["title"] == "Renamed topic"
    # a conversation that gets an answer moves to the top
    page.get_by_role("link", name="Topic 05").click()
    send(page, "Anything new?")
    wait_status(page, "completed")
    expect(links.first).to_have_text("Topic 05")
