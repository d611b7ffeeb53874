"""Log format: JSON lines by default, readable lines when stdout is a terminal and the
format is not forced (PARLEY_LOG_JSON unset), both redacted."""

from __future__ import annotations

import io
import json

import pytest

from server.logging import configure_logging, get_logger


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "forced", "is_json"),
    [
        (io.StringIO, None, True),
        (Tty, None, False),
        (Tty, True, True),
        (io.StringIO, False, False),
    ],
)
def test_format_follows_the_terminal(
    monkeypatch: pytest.MonkeyPatch, stream: type[io.StringIO], forced: bool | None, is_json: bool
) -> None:
    out = stream()
    monkeypatch.setattr("sys.stdout", out)
    try:
        configure_logging("INFO", json=forced)
        get_logger("t").info("hello", email="someone@example.com", token="eyJa.eyJb.sig")
    finally:
        configure_logging("INFO", json=True)
    line = out.getvalue().strip()
    assert "someone@" not in line and "eyJa" not in line and "s***@example.com" in line
    if is_json:
        assert json.loads(line)["event"] == "hello"
    else:
        assert line.startswith("20") and "hello" in line and not line.startswith("{")
