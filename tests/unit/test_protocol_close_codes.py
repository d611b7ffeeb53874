"""Close codes, reconnect advice and reasons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.close_codes import (
    CLOSE_CODES,
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    close_reason,
    should_reconnect,
    truncate_reason,
)
from protocol.errors import ErrorCode

# code -> (reconnect, reason), from the contract's "Close codes" section
EXPECTED = {
    1008: (False, "POLICY_VIOLATION"),
    1009: (False, "PAYLOAD_TOO_LARGE"),
    1011: (True, "SERVER_ERROR"),
    1012: (True, "SERVER_DRAINING"),
    1013: (True, "INSTANCE_FULL"),
    4001: (True, "AUTH_EXPIRED"),
    4008: (True, "SLOW_CONSUMER"),
    4029: (True, "RATE_LIMITED"),
    4500: (False, "AUTH_INVALID"),
    4504: (False, "TOO_MANY_CONNECTIONS"),
    4509: (False, "TOO_MANY_INVALID_FRAMES"),
}


def test_every_contract_code_is_there() -> None:
    assert {int(c) for c in CloseCode} == set(EXPECTED)
    assert {int(c) for c in CLOSE_CODES} == set(EXPECTED)


def test_aliases() -> None:
    assert CloseCode.DRAINING is CloseCode.RESTART
    assert CloseCode.INSTANCE_FULL is CloseCode.TRY_AGAIN_LATER
    assert CloseCode.SESSION_REVOKED is CloseCode.TOKEN_INVALID
    assert CloseCode.TOKEN_EXPIRED == 4001
    assert CloseCode.SLOW_CONSUMER == 4008


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_table(code: int, expected: tuple[bool, str]) -> None:
    reconnect, reason = expected
    assert should_reconnect(code) is reconnect
    assert close_reason(CloseCode(code)) == reason
    assert CLOSE_CODES[CloseCode(code)].doc
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES


def test_reasons_that_name_an_error_code_are_real_codes() -> None:
    names = {c.value for c in ErrorCode}
    assert close_reason(CloseCode.TOKEN_INVALID) in names
    assert close_reason(CloseCode.TOKEN_EXPIRED) in names
    assert close_reason(CloseCode.TOO_BIG) in names
    assert close_reason(CloseCode.RATE_LIMITED) in names
    assert close_reason(CloseCode.INTERNAL) in names
    assert close_reason(CloseCode.RESTART) in names


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, False),
        (1001, True),
        (1002, False),
        (1003, False),
        (1005, True),
        (1006, True),
        (1007, False),
        (1010, False),
        (1014, True),
        (1015, True),
        (3000, False),
        (4000, True),
        (4499, True),
        (4500, False),
        (4999, False),
        (5000, False),
    ],
)
def test_codes_the_server_does_not_send(code: int, reconnect: bool) -> None:
    assert should_reconnect(code) is reconnect


def test_truncate_reason_keeps_short_reasons() -> None:
    assert truncate_reason("AUTH_INVALID") == "AUTH_INVALID"
    assert truncate_reason("x" * 123) == "x" * 123


def test_truncate_reason_never_splits_a_character() -> None:
    out = truncate_reason("é" * 100)  # 200 bytes
    assert out == "é" * 61  # 122 bytes: the 62nd would need 124
    assert truncate_reason("a" + "😀" * 40) == "a" + "😀" * 30


@given(st.text())
def test_truncate_reason_property(reason: str) -> None:
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        return
    out = truncate_reason(reason)
    assert len(out.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    assert reason.startswith(out)
    if len(reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
        assert out == reason
    else:
        assert len(out.encode("utf-8")) > MAX_CLOSE_REASON_BYTES - 4
