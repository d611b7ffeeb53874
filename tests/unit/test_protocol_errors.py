"""Error codes, their table, and ProtocolError."""

from __future__ import annotations

import pytest

from protocol.close_codes import CloseCode
from protocol.errors import ERRORS, ErrorClass, ErrorCode, ErrorSpec, ProtocolError

CONTRACT_CODES = {
    "VALIDATION_FAILED",
    "UNKNOWN_TYPE",
    "PAYLOAD_TOO_LARGE",
    "AUTH_EXPIRED",
    "AUTH_INVALID",
    "NOT_FOUND",
    "CONVERSATION_BUSY",
    "DUPLICATE_CONTENT",
    "IDEMPOTENCY_CONFLICT",
    "RATE_LIMITED",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_ERROR",
    "UPSTREAM_UNAVAILABLE",
    "REPLAY_EXPIRED",
    "SERVER_ERROR",
    "SERVER_DRAINING",
}

RETRYABLE = {
    "CONVERSATION_BUSY",
    "RATE_LIMITED",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_ERROR",
    "UPSTREAM_UNAVAILABLE",
    "SERVER_ERROR",
    "SERVER_DRAINING",
}

EXPECTED_CLASS = {
    "VALIDATION_FAILED": "VALIDATION",
    "UNKNOWN_TYPE": "VALIDATION",
    "PAYLOAD_TOO_LARGE": "VALIDATION",
    "AUTH_EXPIRED": "AUTH",
    "AUTH_INVALID": "AUTH",
    "NOT_FOUND": "VALIDATION",
    "CONVERSATION_BUSY": "RLIMIT",
    "DUPLICATE_CONTENT": "VALIDATION",
    "IDEMPOTENCY_CONFLICT": "VALIDATION",
    "RATE_LIMITED": "RLIMIT",
    "UPSTREAM_TIMEOUT": "UPSTREAM",
    "UPSTREAM_ERROR": "UPSTREAM",
    "UPSTREAM_UNAVAILABLE": "UPSTREAM",
    "REPLAY_EXPIRED": "VALIDATION",
    "SERVER_ERROR": "SERVER",
    "SERVER_DRAINING": "SERVER",
}


def test_codes_are_exactly_the_contracts() -> None:
    assert {c.value for c in ErrorCode} == CONTRACT_CODES
    assert {c.name for c in ErrorCode} == CONTRACT_CODES


def test_classes_are_exactly_the_contracts() -> None:
    assert {c.value for c in ErrorClass} == {"VALIDATION", "AUTH", "RLIMIT", "UPSTREAM", "SERVER"}


def test_table_covers_every_code_once() -> None:
    assert set(ERRORS) == set(ErrorCode)
    assert all(isinstance(spec, ErrorSpec) for spec in ERRORS.values())


@pytest.mark.parametrize("code", list(ErrorCode))
def test_table_entry(code: ErrorCode) -> None:
    spec = ERRORS[code]
    assert spec.retryable is (code.value in RETRYABLE)
    assert spec.cls.value == EXPECTED_CLASS[code.value]
    assert spec.default_message
    assert spec.doc


def test_table_is_frozen() -> None:
    with pytest.raises(TypeError):
        ERRORS[ErrorCode.NOT_FOUND] = ERRORS[ErrorCode.SERVER_ERROR]  # type: ignore[index]
    with pytest.raises(AttributeError):
        ERRORS[ErrorCode.NOT_FOUND].retryable = True  # type: ignore[misc]


def test_error_defaults_to_table_message() -> None:
    err = ProtocolError(ErrorCode.NOT_FOUND)
    assert err.message == ERRORS[ErrorCode.NOT_FOUND].default_message
    assert err.spec is ERRORS[ErrorCode.NOT_FOUND]
    assert err.error_class is ErrorClass.VALIDATION
    assert err.retryable is False
    assert err.request_id is None and err.trace_id is None and err.close_code is None
    assert err.to_data() == {
        "code": "NOT_FOUND",
        "class": "VALIDATION",
        "message": ERRORS[ErrorCode.NOT_FOUND].default_message,
        "retryable": False,
    }


def test_error_with_retry_after_and_ids() -> None:
    err = ProtocolError(
        ErrorCode.RATE_LIMITED,
        "slow down",
        retry_after_ms=1500,
        request_id="r-1",
        trace_id="ab" * 16,
    )
    assert err.to_data() == {
        "code": "RATE_LIMITED",
        "class": "RLIMIT",
        "message": "slow down",
        "retryable": True,
        "retryAfterMs": 1500,
    }
    assert err.request_id == "r-1"
    assert err.trace_id == "ab" * 16
    assert str(err) == "RATE_LIMITED: slow down"
    assert "RATE_LIMITED" in repr(err) and "r-1" in repr(err)


def test_error_accepts_code_as_string_and_carries_close_code() -> None:
    err = ProtocolError("PAYLOAD_TOO_LARGE", close_code=CloseCode.TOO_BIG)  # type: ignore[arg-type]
    assert err.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert err.close_code == 1009


def test_error_zero_retry_after_is_kept() -> None:
    assert ProtocolError(ErrorCode.RATE_LIMITED, retry_after_ms=0).to_data()["retryAfterMs"] == 0


def test_error_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        ProtocolError("NOPE")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProtocolError(ErrorCode.RATE_LIMITED, retry_after_ms=-1)


def test_error_is_an_exception() -> None:
    with pytest.raises(ProtocolError) as info:
        raise ProtocolError(ErrorCode.SERVER_DRAINING)
    assert info.value.retryable is True
    assert info.value.error_class is ErrorClass.SERVER
