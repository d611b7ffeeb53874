"""The turn state machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.frames import MessageStatus
from protocol.turn import (
    DEFAULT_FINISH_REASONS,
    TERMINAL_STATES,
    DeltaResult,
    LocalProtocolError,
    Turn,
    TurnState,
)

S = TurnState


def turn_in(state: TurnState) -> Turn:
    """A fresh turn driven into `state` through the public API."""
    t = Turn()
    if state is S.PENDING:
        return t
    if state is S.STREAMING:
        t.start_streaming()
        return t
    if state is S.TRUNCATED:
        t.start_streaming()
        t.finish(S.TRUNCATED)
        return t
    t.finish(state)
    return t


def _finish(status: TurnState) -> Callable[[Turn], object]:
    return lambda t: t.finish(status)


EVENTS: dict[str, Callable[[Turn], object]] = {
    "start_streaming": lambda t: t.start_streaming(),
    "add_delta": lambda t: t.add_delta("x"),
    **{f"finish_{s.name}": _finish(s) for s in TERMINAL_STATES},
}

# (state, event) -> state after; missing pairs are forbidden
ALLOWED: dict[tuple[TurnState, str], TurnState] = {
    (S.PENDING, "start_streaming"): S.STREAMING,
    (S.PENDING, "finish_COMPLETED"): S.COMPLETED,
    (S.PENDING, "finish_CANCELLED"): S.CANCELLED,
    (S.PENDING, "finish_FAILED"): S.FAILED,
    (S.PENDING, "finish_INTERRUPTED"): S.INTERRUPTED,
    (S.STREAMING, "add_delta"): S.STREAMING,
    (S.STREAMING, "finish_COMPLETED"): S.COMPLETED,
    (S.STREAMING, "finish_CANCELLED"): S.CANCELLED,
    (S.STREAMING, "finish_TRUNCATED"): S.TRUNCATED,
    (S.STREAMING, "finish_FAILED"): S.FAILED,
    (S.STREAMING, "finish_INTERRUPTED"): S.INTERRUPTED,
}


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize("state", list(TurnState))
def test_transition_table(state: TurnState, event: str) -> None:
    t = turn_in(state)
    assert t.state is state
    before = (t.text, t.chunks, t.output_tokens, t.output_bytes, t.finish_reason)
    if (state, event) in ALLOWED:
        EVENTS[event](t)
        assert t.state is ALLOWED[(state, event)]
    else:
        with pytest.raises(LocalProtocolError):
            EVENTS[event](t)
        assert t.state is state  # nothing changed
        assert (t.text, t.chunks, t.output_tokens, t.output_bytes, t.finish_reason) == before


def test_every_state_is_reachable_and_terminal_ones_are_final() -> None:
    for state in TurnState:
        t = turn_in(state)
        assert t.is_terminal is (state in TERMINAL_STATES)
    assert set(TurnState) - TERMINAL_STATES == {S.PENDING, S.STREAMING}


def test_streaming_happy_path() -> None:
    t = Turn()
    assert t.state is S.PENDING
    assert t.message_status is MessageStatus.STREAMING
    assert t.last_chunk == -1 and t.finish_reason is None
    t.start_streaming()
    assert t.add_delta("Hel") == DeltaResult(0, "Hel", False)
    assert t.add_delta("lo, ") == DeltaResult(1, "lo, ", False)
    assert t.add_delta("wörld") == DeltaResult(2, "wörld", False)
    assert t.text == "Hello, wörld"
    assert t.text == "Hello, wörld"  # cached
    assert t.chunks == 3 and t.last_chunk == 2
    assert t.output_tokens == 3
    assert t.output_bytes == len("Hello, wörld".encode())
    t.finish(S.COMPLETED)
    assert t.state is S.COMPLETED
    assert t.finish_reason == "stop"
    assert t.message_status is MessageStatus.COMPLETED
    assert "COMPLETED" in repr(t)


def test_text_after_more_deltas() -> None:
    t = Turn()
    t.start_streaming()
    t.add_delta("a")
    assert t.text == "a"
    t.add_delta("b")
    assert t.text == "ab"


def test_empty_turn_completes_from_pending() -> None:
    t = Turn()
    t.finish(S.COMPLETED)
    assert t.text == "" and t.last_chunk == -1
    assert t.finish_reason == "stop"


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_default_finish_reasons(state: TurnState) -> None:
    t = turn_in(state)
    assert t.finish_reason == DEFAULT_FINISH_REASONS[state]
    assert t.message_status.value == state.value


def test_custom_finish_reason() -> None:
    t = turn_in(S.STREAMING)
    t.finish(S.FAILED, "timeout")
    assert t.finish_reason == "timeout"
    t = turn_in(S.STREAMING)
    t.finish(S.TRUNCATED, "length")
    assert t.finish_reason == "length"
    t = turn_in(S.STREAMING)
    t.finish("completed", "content_filter")  # type: ignore[arg-type]
    assert t.state is S.COMPLETED


@pytest.mark.parametrize("reason", ["stop", ""])
def test_truncated_needs_length(reason: str) -> None:
    t = turn_in(S.STREAMING)
    with pytest.raises(ValueError):
        t.finish(S.TRUNCATED, reason)
    assert t.state is S.STREAMING


@pytest.mark.parametrize("reason", ["", "x" * 65])
def test_bad_finish_reason(reason: str) -> None:
    t = turn_in(S.STREAMING)
    with pytest.raises(ValueError):
        t.finish(S.COMPLETED, reason)
    assert t.state is S.STREAMING


def test_finish_to_non_terminal_is_forbidden() -> None:
    for target in (S.PENDING, S.STREAMING):
        with pytest.raises(LocalProtocolError):
            turn_in(S.STREAMING).finish(target)


def test_empty_delta_takes_no_chunk() -> None:
    t = turn_in(S.STREAMING)
    assert t.add_delta("") == DeltaResult(None, "", False)
    assert t.chunks == 0 and t.output_tokens == 0
    assert t.add_delta("a") == DeltaResult(0, "a", False)


def test_token_counts() -> None:
    t = turn_in(S.STREAMING)
    t.add_delta("abc", tokens=3)
    t.add_delta("d", tokens=0)
    t.add_delta("e")
    assert t.output_tokens == 4
    assert t.chunks == 3
    with pytest.raises(ValueError):
        t.add_delta("f", tokens=-1)
    assert t.output_tokens == 4 and t.chunks == 3


def test_token_limit_truncates_automatically() -> None:
    t = Turn(max_output_tokens=3)
    t.start_streaming()
    assert not t.add_delta("a").truncated
    assert not t.add_delta("b").truncated
    r = t.add_delta("c")
    assert r == DeltaResult(2, "c", True)  # the delta reaching the limit is kept
    assert t.state is S.TRUNCATED
    assert t.finish_reason == "length"
    assert t.text == "abc"
    with pytest.raises(LocalProtocolError):
        t.add_delta("d")
    with pytest.raises(LocalProtocolError):
        t.finish(S.COMPLETED)


def test_token_limit_crossed_by_a_multi_token_delta() -> None:
    t = Turn(max_output_tokens=4096)
    t.start_streaming()
    t.add_delta("x", tokens=4094)
    r = t.add_delta("yz", tokens=5)
    assert r.truncated and r.text == "yz" and t.output_tokens == 4099
    assert t.state is S.TRUNCATED


def test_default_limits() -> None:
    t = Turn()
    assert t.max_output_tokens == 4096
    assert t.max_output_bytes == 65536
    t.start_streaming()
    for i in range(4095):
        assert not t.add_delta("a").truncated, i
    assert t.add_delta("a").truncated
    assert t.chunks == 4096 and t.output_tokens == 4096
    assert t.state is S.TRUNCATED


def test_byte_limit_trims_without_splitting_characters() -> None:
    t = Turn(max_output_bytes=10)
    t.start_streaming()
    assert t.add_delta("abcdefg") == DeltaResult(0, "abcdefg", False)  # 7 bytes
    r = t.add_delta("é€x")  # 2 + 3 + 1 bytes, room 3: only "é" fits
    assert r == DeltaResult(1, "é", True)
    assert t.text == "abcdefgé"
    assert t.output_bytes == 9 <= 10
    assert t.state is S.TRUNCATED and t.finish_reason == "length"


def test_byte_limit_cut_to_nothing_takes_no_chunk() -> None:
    t = Turn(max_output_bytes=5)
    t.start_streaming()
    t.add_delta("abc")
    r = t.add_delta("😀")  # 4 bytes, room 2
    assert r == DeltaResult(None, "", True)
    assert t.text == "abc" and t.chunks == 1 and t.last_chunk == 0
    assert t.state is S.TRUNCATED


def test_byte_limit_reached_exactly() -> None:
    t = Turn(max_output_bytes=4)
    t.start_streaming()
    assert t.add_delta("ab") == DeltaResult(0, "ab", False)
    assert t.add_delta("cd") == DeltaResult(1, "cd", True)
    assert t.state is S.TRUNCATED


def test_default_byte_limit() -> None:
    t = Turn()
    t.start_streaming()
    block = "€" * 1000  # 3,000 bytes
    while not t.is_terminal:
        t.add_delta(block)
    assert t.output_bytes == len(t.text.encode()) <= 65536
    assert t.output_bytes > 65536 - 3
    assert t.state is S.TRUNCATED


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Turn(max_output_tokens=0)
    with pytest.raises(ValueError):
        Turn(max_output_bytes=0)


@given(
    st.lists(st.tuples(st.text(max_size=20), st.integers(0, 3)), max_size=60),
    st.integers(1, 40),
    st.integers(1, 120),
)
def test_delta_invariants(deltas: list[tuple[str, int]], max_tokens: int, max_bytes: int) -> None:
    t = Turn(max_output_tokens=max_tokens, max_output_bytes=max_bytes)
    t.start_streaming()
    sent: list[tuple[int, str]] = []
    for text, tokens in deltas:
        if t.is_terminal:
            break
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue
        r = t.add_delta(text, tokens)
        assert text.startswith(r.text)
        assert (r.chunk is None) == (r.text == "")
        if r.chunk is not None:
            sent.append((r.chunk, r.text))
        assert r.truncated is (t.state is S.TRUNCATED)
        assert r.text == text or r.truncated
    assert [c for c, _ in sent] == list(range(len(sent)))
    assert "".join(d for _, d in sent) == t.text
    assert len(t.text.encode()) == t.output_bytes <= max_bytes
    assert t.chunks == len(sent)


def test_from_checkpoint() -> None:
    t = Turn.from_checkpoint("Hello", chunks=3)
    assert t.state is S.STREAMING
    assert t.text == "Hello" and t.output_tokens == 3 and t.output_bytes == 5
    assert t.add_delta("!") == DeltaResult(3, "!", False)
    assert t.text == "Hello!"
    t = Turn.from_checkpoint("", chunks=0, output_tokens=0)
    assert t.add_delta("a").chunk == 0
    t = Turn.from_checkpoint("ab", chunks=2, output_tokens=7, max_output_tokens=8)
    assert t.add_delta("c").truncated


@pytest.mark.parametrize(
    ("text", "chunks", "tokens", "max_tokens", "max_bytes"),
    [
        ("", 1, None, 4096, 65536),
        ("a", 0, None, 4096, 65536),
        ("a", -1, None, 4096, 65536),
        ("a", 1, -1, 4096, 65536),
        ("a", 4, None, 4, 65536),
        ("abcd", 1, None, 4096, 4),
    ],
)
def test_from_checkpoint_refuses(
    text: str, chunks: int, tokens: int | None, max_tokens: int, max_bytes: int
) -> None:
    with pytest.raises(ValueError):
        Turn.from_checkpoint(
            text,
            chunks=chunks,
            output_tokens=tokens,
            max_output_tokens=max_tokens,
            max_output_bytes=max_bytes,
        )
