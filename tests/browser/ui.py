"""What a person does on the page, and what they see, as small helpers."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.browser.conftest import PASSWORD, new_email


def register(page: Any, base: str, email: str | None = None) -> str:
    email = email or new_email()
    page.goto(f"{base}/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("button", name="New conversation", exact=True).wait_for()
    return email


def sign_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/sign-in")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="New conversation", exact=True).wait_for()


def new_conversation(page: Any) -> str:
    page.get_by_role("button", name="New conversation", exact=True).click()
    page.wait_for_url(re.compile(r".*/c/[0-9a-f-]{36}$"))
    wait_connected(page)
    return str(page.url.rsplit("/", 1)[1])


def wait_connected(page: Any, timeout: float = 20_000) -> None:
    page.locator('.conn[data-state="connected"]').wait_for(timeout=timeout)


def composer(page: Any) -> Any:
    return page.get_by_role("textbox", name="Message")


def send(page: Any, text: str) -> None:
    box = composer(page)
    box.fill(text)
    box.press("Enter")


def last_answer(page: Any) -> Any:
    return page.locator("article.msg-assistant").last


def answer_text(page: Any) -> str:
    loc = last_answer(page).locator(".md")
    if loc.count() == 0:
        return ""
    return " ".join(str(loc.inner_text()).split())


def answer_status(page: Any) -> str | None:
    loc = page.locator("article.msg-assistant")
    if loc.count() == 0:
        return None
    return loc.last.get_attribute("data-status")


def wait_status(page: Any, status: str, timeout: float = 30) -> None:
    """The newest answer (the last one in the list) reaches `status`."""
    page.wait_for_function(
        "(s) => { const a = document.querySelectorAll('article.msg-assistant');"
        " return a.length > 0 && a[a.length - 1].dataset.status === s; }",
        arg=status,
        timeout=timeout * 1000,
    )


def growing_states(page: Any, count: int, timeout: float = 20) -> list[str]:
    """Distinct, ever longer texts of the answer while it streams (each a prefix of the next)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        text = answer_text(page)
        longer = not seen or (text != seen[-1] and len(text) > len(seen[-1]))
        if text and longer and answer_status(page) == "streaming":
            seen.append(text)
        time.sleep(0.05)
    return seen


def stored_answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return [m for m in messages if m["role"] == "assistant"][-1]


def words(text: str) -> str:
    return " ".join(text.split())


def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core (preloaded by the test context) on the page: the serious and critical ones."""
    result = page.evaluate(
        "async () => { const r = await axe.run(document, {resultTypes: ['violations']});"
        " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})); }"
    )
    return [v for v in result if v["impact"] in ("serious", "critical")]
