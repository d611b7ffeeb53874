from __future__ import annotations

import json

import pytest

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
