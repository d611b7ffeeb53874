from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server import logging as parley_logging
from server.logging import configure_logging, get_logger, mask_email, redact


def test_mask_and_redact() -> None:
    assert mask_email("write to alice.smith@example.com now") == "write to a***@example.com now"
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
    assert "eyJ" not in redact(f"token {jwt_like}")
    assert redact(
        {"password": "hunter22", "nested": {"refreshToken": "abc"}, "note": "Bearer abc.def"}
    ) == {
        "password": "[REDACTED]",
        "nested": {"refreshToken": "[REDACTED]"},
        "note": "Bearer [REDACTED]",
    }


def _redact_every_time(value: str) -> str:
    """The three substitutions, run on every string (what :func:`redact` skips when
    none of them can match)."""
    masked = parley_logging._JWT.sub("[REDACTED]", mask_email(value))
    return parley_logging._BEARER.sub(r"\1[REDACTED]", masked)


_PIECES = st.sampled_from(
    [
        "@",
        "a@b.co",
        "x.y@example.org",
        "eyJ",
        "eyJa.eyJb.sig",
        "Bearer ",
        "BEARER.",
        "bearer",
        "token",
        " ",
        ".",
        "-",
        "é",
        "abc",
        "0123456789abcdef",
    ]
)


@given(st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=8).map("".join))
def test_skipping_clean_strings_redacts_exactly_what_the_full_pass_does(value: str) -> None:
    assert redact(value) == _redact_every_time(value)


def test_log_lines_are_json_without_pii(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    get_logger("t").info(
        "login", email="bob@example.org", accessToken="eyJa.eyJb.sig", traceId="t1", userId="u1"
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "login" and event["traceId"] == "t1" and event["userId"] == "u1"
    assert "bob@example.org" not in line and event["email"] == "b***@example.org"
    assert event["accessToken"] == "[REDACTED]"
