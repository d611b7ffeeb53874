"""The chat in a real browser: streaming, reload, stop, offline, two pages, accounts,
errors, accessibility. One `parley serve` for the module; each test makes its own users."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Pages, Served, new_email
from tests.browser.ui import (
    answer_status,
    answer_text,
    composer,
    growing_states,
    new_conversation,
    register,
    run_axe,
    send,
    sign_in,
    stored_answer,
    wait_connected,
    wait_status,
    words,
)

SLOW = "[[sim:tokens=90,tps=25]] "  # about 3.6 s of streaming


def test_send_streams_then_reload_mid_answer_completes_as_stored(
    served: Served, pages: Pages
) -> None:
    page = pages.new()
    email = register(page, served.url)
    conv = new_conversation(page)
    send(page, SLOW + "Tell me about rivers")
    expect_user = page.locator("article.msg-user").last
    expect_user.wait_for()
    assert "Tell me about rivers" in expect_user.inner_text()
    states = growing_states(page, 4)
    assert len(states) == 4, states  # the answer grew in front of us, step by step
    for a, b in itertools.pairwise(states):
        assert b.startswith(a[: max(1, len(a) - 1)])
    assert page.locator("article.msg-assistant .writing").count() == 1
    # reload while it streams: the page signs back in from this tab's storage and resumes
    page.reload()
    wait_connected(page)
    page.locator("article.msg-assistant").first.wait_for()  # the history is back
    assert answer_status(page) in ("streaming", "completed")
    wait_status(page, "completed")
    stored = stored_answer(served.history(served.login(email), conv))
    assert stored["status"] == "completed"
    assert answer_text(page) == words(stored["content"])
    assert len(stored["content"].split()) == 90
    assert "Answer complete" in page.get_by_test_id("announcer").inner_text()


def test_stop_keeps_the_partial_text(served: Served, pages: Pages) -> None:
    page = pages.new()
    email = register(page, served.url)
    conv = new_conversation(page)
    send(page, "[[sim:tokens=200,tps=20]] a long one")
    assert len(growing_states(page, 2)) == 2
    page.get_by_role("button", name="Stop").click()
    wait_status(page, "cancelled")
    assert page.get_by_text("Stopped. The text so far is kept.").is_visible()
    shown = answer_text(page)
    stored = stored_answer(served.history(served.login(email), conv))
    assert stored["status"] == "cancelled"
    assert shown == words(stored["content"])
    assert 0 < len(stored["content"].split()) < 200
    assert page.get_by_role("button", name="Send").is_visible()


def test_offline_and_back_loses_and_doubles_nothing(served: Served, pages: Pages) -> None:
    page = pages.new()
    email = register(page, served.url)
    conv = new_conversation(page)
    send(page, "[[sim:tokens=120,tps=25]] through a tunnel")
    assert len(growing_states(page, 2)) == 2
    page.context.set_offline(True)
    page.locator('.conn[data-state="offline"]').wait_for()
    held = answer_text(page)
    time.sleep(1.5)  # the answer goes on without us
    assert answer_text(page) == held
    page.context.set_offline(False)
    wait_connected(page)
    wait_status(page, "completed")
    stored = stored_answer(served.history(served.login(email), conv))
    assert answer_text(page) == words(stored["content"])
    assert len(answer_text(page).split()) == 120


def test_two_pages_follow_the_same_answer(served: Served, pages: Pages) -> None:
    first = pages.new()
    email = register(first, served.url)
    conv = new_conversation(first)
    second = pages.new()
    sign_in(second, served.url, email)
    send(first, "[[sim:tokens=120,tps=25]] both of you")
    assert len(growing_states(first, 1)) == 1
    second.goto(f"{served.url}/c/{conv}")
    wait_connected(second)
    states = growing_states(second, 3)
    assert len(states) == 3, states  # the second page follows the live turn (chat.resume)
    wait_status(first, "completed")
    wait_status(second, "completed")
    stored = stored_answer(served.history(served.login(email), conv))
    assert answer_text(first) == answer_text(second) == words(stored["content"])


def test_guest_upgrade_keeps_the_conversation_then_sign_out_and_in(
    served: Served, pages: Pages
) -> None:
    page = pages.new()
    page.goto(served.url)
    page.get_by_role("button", name="Continue as guest").click()
    conv = new_conversation(page)
    send(page, "[[sim:tokens=5]] remember me")
    wait_status(page, "completed")
    page.get_by_role("link", name="Guest: save your account").click()
    email = new_email()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("password 123")
    page.get_by_role("button", name="Save my account").click()
    page.get_by_text("Your account is saved").wait_for()
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(re.compile(r".*/sign-in$"))
    sign_in(page, served.url, email)
    page.get_by_role("link", name="New conversation").first.click()
    page.wait_for_url(re.compile(rf".*/c/{conv}$"))
    wait_status(page, "completed")
    assert "remember me" in page.locator("article.msg-user").last.inner_text()


def test_revoking_a_session_sends_that_page_to_sign_in(served: Served, pages: Pages) -> None:
    victim = pages.new()
    email = register(victim, served.url)
    new_conversation(victim)
    admin = pages.new()
    sign_in(admin, served.url, email)
    admin.get_by_role("link", name="Account", exact=True).click()
    revoke = admin.get_by_role("button", name="Revoke")
    revoke.first.wait_for()
    assert revoke.count() == 1  # the other tab; not this one
    revoke.click()
    victim.wait_for_url(re.compile(r".*/sign-in$"), timeout=15_000)
    victim.get_by_role("heading", name="Sign in to Parley").wait_for()
    expect(admin.get_by_role("button", name="Revoke")).to_have_count(0)
    assert admin.locator('.conn[data-state="connected"]').count() == 1


def test_one_error_of_each_class_says_what_to_do(served: Served, pages: Pages) -> None:
    page = pages.new()
    register(page, served.url)
    new_conversation(page)
    # VALIDATION: too long, shown before sending
    composer(page).fill("x" * 8001)
    alert = page.get_by_text("Your message is 8,001 characters; the limit is 8,000.")
    alert.wait_for()
    assert page.get_by_role("button", name="Send").is_disabled()
    assert "8,001 / 8,000 characters" in page.locator("#composer-count").inner_text()
    composer(page).fill("")
    # UPSTREAM: the simulated model stalls past the first-token timeout (1 s here)
    send(page, "[[sim:stall_first=5]] are you there?")
    line = page.locator('.error-line[data-code="UPSTREAM_TIMEOUT"]')
    line.wait_for()
    assert "The model took too long to answer." in line.inner_text()
    assert line.get_by_role("button", name="Retry").is_visible()
    wait_status(page, "failed")
    assert page.get_by_text("Failed: the model did not finish this answer.").is_visible()
    line.get_by_role("button", name="Dismiss").click()
    # RLIMIT: 8 sends a minute for this server; the 9th is refused
    limited = page.locator('.error-line[data-code="RATE_LIMITED"]')
    for i in range(12):
        expect(page.get_by_role("button", name="Send")).to_be_visible()  # nothing streaming
        send(page, f"[[sim:tokens=1]] quick {i}")
        page.wait_for_function(
            """(text) => {
              if (document.querySelector('.error-line[data-code="RATE_LIMITED"]')) return true;
              const u = document.querySelectorAll('article.msg-user');
              const a = document.querySelectorAll('article.msg-assistant');
              const lu = u[u.length - 1], la = a[a.length - 1];
              return lu && la && lu.dataset.status === 'completed' && lu.textContent.includes(text)
                && Number(la.dataset.seq) === Number(lu.dataset.seq) + 1
                && la.dataset.status === 'completed';
            }""",
            arg=f"quick {i}",
        )
        if limited.count():
            break
    assert limited.count() == 1
    text = limited.inner_text()
    assert "You are sending messages too fast." in text and "try again in" in text
    # the retry waits for retryAfterMs: disabled, counting down
    expect(limited.get_by_role("button", name=re.compile(r"^Retry in \d+ s$"))).to_be_disabled()


def _last_user(page: Any) -> str:
    return str(page.locator("article.msg-user").last.inner_text())


def test_axe_finds_nothing_serious_on_any_screen(served: Served, pages: Pages) -> None:
    for scheme in ("light", "dark"):
        page = pages.new(color_scheme=scheme)
        page.goto(f"{served.url}/sign-in")
        page.get_by_role("heading", name="Sign in to Parley").wait_for()
        assert run_axe(page) == [], ("sign-in", scheme)
        page.goto(f"{served.url}/register")
        page.get_by_role("heading", name="Create your Parley account").wait_for()
        assert run_axe(page) == [], ("register", scheme)
        page.get_by_role("button", name="Continue as guest").click()
        page.get_by_role("heading", name="Welcome to Parley").wait_for()
        assert run_axe(page) == [], ("conversation list", scheme)
        new_conversation(page)
        send(page, "[[sim:tokens=30]] hello")
        wait_status(page, "completed")
        page.locator("article.msg-assistant").last.wait_for()
        assert run_axe(page) == [], ("chat", scheme)
        composer(page).fill("y" * 8100)
        page.get_by_text("the limit is 8,000").wait_for()
        assert run_axe(page) == [], ("chat, too long", scheme)
        page.get_by_role("link", name="Account", exact=True).click()
        page.get_by_role("heading", name="Your account").wait_for()
        page.get_by_role("heading", name="Where you are signed in").wait_for()
        assert run_axe(page) == [], ("account", scheme)


def test_account_sign_out_everywhere_and_delete(served: Served, pages: Pages) -> None:
    first = pages.new()
    email = register(first, served.url)
    second = pages.new()
    sign_in(second, served.url, email)
    second.get_by_role("link", name="Account", exact=True).click()
    second.get_by_role("heading", name="Where you are signed in").wait_for()
    expect(second.locator(".sessions li")).to_have_count(2)
    # the export (GET /api/v1/me/export) is served: its button shows and downloads it
    with second.expect_download() as download:
        second.get_by_role("button", name="Download my data").click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert {"user", "sessions", "conversations", "auditEvents", "exportedAt"} <= set(exported)
    assert exported["user"]["email"] == email
    second.get_by_role("button", name="Sign out everywhere").click()
    second.wait_for_url(re.compile(r".*/sign-in$"))
    first.wait_for_url(re.compile(r".*/sign-in$"), timeout=15_000)
    # back in, then the account goes for good
    sign_in(first, served.url, email)
    first.get_by_role("link", name="Account", exact=True).click()
    first.get_by_role("button", name="Delete my account").click()
    first.get_by_role("button", name="Yes, delete my account").click()
    first.wait_for_url(re.compile(r".*/sign-in$"))
    first.get_by_label("Email").fill(email)
    first.get_by_label("Password").fill("password 123")
    first.get_by_role("button", name="Sign in").click()
    first.get_by_text("That email and password do not match an account.").wait_for()


def test_keyboard_alone_sends_breaks_lines_and_stops(served: Served, pages: Pages) -> None:
    page = pages.new()
    register(page, served.url)
    new_conversation(page)
    page.reload()
    wait_connected(page)
    composer(page).wait_for()  # the skip link's target is there (the conversation has loaded)
    page.keyboard.press("Tab")  # the first stop is the skip link
    assert page.evaluate("() => document.activeElement.textContent") == ("Skip to the message box")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "composer-input"
    page.keyboard.type("[[sim:tokens=200,tps=20]] first line")
    page.keyboard.press("Shift+Enter")  # a line break, not a send
    page.keyboard.type("second line")
    assert composer(page).input_value().endswith("first line\nsecond line")
    assert page.locator("article.msg-user").count() == 0
    page.keyboard.press("Enter")
    assert len(growing_states(page, 2)) == 2
    assert "first line\nsecond line" in _last_user(page)
    page.keyboard.press("Tab")  # from the message box to Stop
    assert page.evaluate("() => document.activeElement.textContent") == "Stop"
    page.keyboard.press("Enter")
    wait_status(page, "cancelled")
