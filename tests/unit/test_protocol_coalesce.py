"""The outbound queue and its delta coalescing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.coalesce import OutboundFrame, OutboundQueue
from protocol.codec import encode_server_frame, validate_server_frame
from protocol.outgoing import ReplyTo, StreamDelta

C1 = "0b7e6b3c-7d0a-4a9e-9a57-5b8c5f1e2d3c"
C2 = "1b7e6b3c-7d0a-4a9e-9a57-5b8c5f1e2d3c"
M1 = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
M2 = "9c858901-8a57-4791-81fe-4c455b099bc9"
T1 = "4bf92f3577b34da6a3ce929d0e0e4736"
T2 = "00f067aa0ba902b700f067aa0ba902b7"


def push(
    q: OutboundQueue, chunk: int, delta: str, conv: str = C1, msg: str = M1, **kw: Any
) -> bool:
    reply = ReplyTo(kw.get("request_id", "r1"), kw.get("trace_id", T1))
    return q.push_stream(StreamDelta(conv, msg, kw.get("seq", 2), chunk, delta), reply)


def data(f: OutboundFrame | None) -> dict[str, Any]:
    assert f is not None
    out: dict[str, Any] = orjson.loads(f.text)["data"]
    return out


def ack() -> str:
    return encode_server_frame(
        "chat.ack",
        {
            "conversationId": C1,
            "messageId": M2,
            "userSeq": 1,
            "assistantMessageId": M1,
            "assistantSeq": 2,
            "duplicate": False,
        },
        request_id="r1",
        trace_id=T1,
    )


def test_single_delta_frame() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    assert q.pop() is None
    assert not q and len(q) == 0
    assert push(q, 0, "Hello") is False
    f = q.pop()
    assert f is not None and f.type == "chat.stream"
    frame = validate_server_frame(f.text)
    assert frame.request_id == "r1" and frame.trace_id == T1
    assert data(f) == {
        "conversationId": C1,
        "messageId": M1,
        "seq": 2,
        "chunk": 0,
        "delta": "Hello",
    }
    assert q.bytes_queued == 0 and q.frames_queued == 0


def test_adjacent_deltas_merge() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    assert push(q, 0, "Hel") is False
    assert push(q, 1, "lo") is True
    assert push(q, 2, ", wörld") is True
    assert q.frames_queued == 1 and len(q) == 1 and q
    assert q.merged_total == 2 and q.pushed_total == 3
    f = q.pop()
    assert data(f) == {
        "conversationId": C1,
        "messageId": M1,
        "seq": 2,
        "chunk": 2,
        "delta": "Hello, wörld",
    }
    assert q.pop() is None


def test_never_merges_across_another_frame() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a")
    q.push_frame(OutboundFrame(ack(), "chat.ack"))
    assert push(q, 1, "b") is False
    assert push(q, 2, "c") is True
    out = [q.pop() for _ in range(3)]
    assert [f.type for f in out if f] == ["chat.stream", "chat.ack", "chat.stream"]
    assert data(out[0])["delta"] == "a" and data(out[0])["chunk"] == 0
    assert out[1] is not None and out[1].text == ack()
    assert data(out[2])["delta"] == "bc" and data(out[2])["chunk"] == 2


def test_never_merges_across_another_message() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a", conv=C1, msg=M1)
    push(q, 0, "x", conv=C2, msg=M2)
    assert push(q, 1, "b", conv=C1, msg=M1) is False
    assert [data(q.pop())["delta"] for _ in range(3)] == ["a", "x", "b"]


@pytest.mark.parametrize(
    "other",
    [
        {"conv": C2},
        {"msg": M2},
        {"seq": 3},
        {"request_id": "r2"},
        {"request_id": None},
        {"trace_id": T2},
        {"chunk": 2},  # a gap: chunk 1 missing
        {"chunk": 0},  # not after the tail
    ],
)
def test_merge_needs_same_message_and_next_chunk(other: dict[str, Any]) -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a")
    chunk = other.pop("chunk", 1)
    assert push(q, chunk, "b", **other) is False
    assert q.frames_queued == 2 and q.merged_total == 0


def test_null_request_id_merges_with_null() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a", request_id=None)
    assert push(q, 1, "b", request_id=None) is True
    f = q.pop()
    assert f is not None and orjson.loads(f.text)["requestId"] is None


def test_items_keep_merging_while_waiting() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a")
    assert data(q.pop())["delta"] == "a"  # writer keeps up: one frame per delta
    push(q, 1, "b")
    push(q, 2, "c")  # writer behind: merged
    assert data(q.pop()) | {} == {
        "conversationId": C1,
        "messageId": M1,
        "seq": 2,
        "chunk": 2,
        "delta": "bc",
    }


def test_empty_delta_refused() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    with pytest.raises(ValueError):
        push(q, 0, "")
    assert q.frames_queued == 0 and q.pushed_total == 0


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        OutboundQueue(max_frames=0, max_bytes=1)
    with pytest.raises(ValueError):
        OutboundQueue(max_frames=1, max_bytes=0)


def test_bytes_queued_is_exact() -> None:
    q = OutboundQueue(max_frames=100, max_bytes=1 << 20)
    push(q, 0, 'a"\\\n\x01é😀')
    for i in range(1, 12):  # crosses 9 -> 10: the chunk number grows a digit
        push(q, i, "x")
    push(q, 0, "y", request_id='q"é')
    q.push_frame(OutboundFrame("é" * 10, "chat.message"))
    q.push_frame(OutboundFrame("abc", "pong"))
    total = q.bytes_queued
    popped = 0
    while (f := q.pop()) is not None:
        popped += len(f.text.encode())
    assert popped == total
    assert q.bytes_queued == 0


def test_over_limit_by_bytes() -> None:
    q = OutboundQueue(max_frames=1000, max_bytes=1000)
    push(q, 0, "x" * 500)
    assert not q.over_limit
    push(q, 1, "x" * 600)
    assert q.frames_queued == 1
    assert q.bytes_queued > 1000 and q.over_limit
    q.pop()
    assert not q.over_limit


def test_over_limit_by_frames() -> None:
    q = OutboundQueue(max_frames=2, max_bytes=1 << 20)
    q.push_frame(OutboundFrame("a", "pong"))
    q.push_frame(OutboundFrame("b", "pong"))
    assert not q.over_limit
    q.push_frame(OutboundFrame("c", "pong"))
    assert q.over_limit  # reported, never refused
    assert [q.pop() for _ in range(3)] == [
        OutboundFrame("a", "pong"),
        OutboundFrame("b", "pong"),
        OutboundFrame("c", "pong"),
    ]


def test_clear() -> None:
    q = OutboundQueue(max_frames=10, max_bytes=10_000)
    push(q, 0, "a")
    q.push_frame(OutboundFrame("b", "pong"))
    q.clear()
    assert q.frames_queued == 0 and q.bytes_queued == 0 and q.pop() is None


# -- property: nothing lost, duplicated or reordered ------------------------------

MESSAGES = [(C1, M1, 2, "r1", T1), (C1, M2, 4, None, T1), (C2, M1, 2, "r9", T2)]

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("delta"), st.integers(0, len(MESSAGES) - 1), st.text(min_size=1, max_size=8)
        ),
        st.tuples(st.just("frame"), st.just(0), st.text(max_size=8)),
        st.tuples(st.just("pop"), st.just(0), st.just("")),
    ),
    max_size=120,
)


@settings(max_examples=400)
@given(_ops, st.integers(1, 5))
def test_coalescing_is_lossless_and_ordered(ops: list[tuple[str, int, str]], bound: int) -> None:
    q = OutboundQueue(max_frames=bound, max_bytes=300)
    pushed: list[tuple[Any, ...]] = []  # ("delta", m, chunk, text) | ("frame", text)
    next_chunk = [0] * len(MESSAGES)
    popped: list[OutboundFrame] = []
    bytes_out = 0

    def pop() -> None:
        nonlocal bytes_out
        before = q.bytes_queued
        f = q.pop()
        if f is None:
            assert before == 0
            return
        assert before - q.bytes_queued == len(f.text.encode())
        bytes_out += len(f.text.encode())
        popped.append(f)

    for kind, m, text in ops:
        if kind == "delta":
            conv, msg, seq, rid, tid = MESSAGES[m]
            chunk = next_chunk[m]
            next_chunk[m] += 1
            q.push_stream(StreamDelta(conv, msg, seq, chunk, text), ReplyTo(rid, tid))
            pushed.append(("delta", m, chunk, text))
        elif kind == "frame":
            encoded = orjson.dumps({"other": text, "n": len(pushed)}).decode()
            q.push_frame(OutboundFrame(encoded, "chat.ack"))
            pushed.append(("frame", encoded))
        else:
            pop()
        assert q.over_limit is (q.bytes_queued > 300 or q.frames_queued > bound)
    while q:
        pop()
    assert q.bytes_queued == 0

    # Replay the popped frames against what was pushed, in order.
    i = 0
    for f in popped:
        if f.type != "chat.stream":
            assert pushed[i] == ("frame", f.text)
            i += 1
            continue
        frame = validate_server_frame(f.text)
        d = orjson.loads(f.text)["data"]
        envelope = orjson.loads(f.text)
        first = pushed[i]
        assert first[0] == "delta"
        m = first[1]
        conv, msg, seq, rid, tid = MESSAGES[m]
        assert (d["conversationId"], d["messageId"], d["seq"]) == (conv, msg, seq)
        assert (frame.request_id, envelope["traceId"]) == (rid, tid)
        text = ""
        expected_chunk = first[2]
        while i < len(pushed) and pushed[i][0] == "delta" and pushed[i][1] == m:
            _, _, chunk, delta = pushed[i]
            if chunk > d["chunk"]:
                break
            assert chunk == expected_chunk
            expected_chunk += 1
            text += delta
            i += 1
        assert expected_chunk - 1 == d["chunk"]
        assert text == d["delta"]
    assert i == len(pushed)

    # Per message: chunks strictly increasing, the text whole.
    for m, (_, msg, seq, _, _) in enumerate(MESSAGES):
        frames = [
            orjson.loads(f.text)["data"]
            for f in popped
            if f.type == "chat.stream"
            and orjson.loads(f.text)["data"]["messageId"] == msg
            and orjson.loads(f.text)["data"]["seq"] == seq
            and orjson.loads(f.text)["data"]["conversationId"] == MESSAGES[m][0]
        ]
        chunks = [d["chunk"] for d in frames]
        assert chunks == sorted(set(chunks))
        if next_chunk[m]:
            assert chunks[-1] == next_chunk[m] - 1
        assert "".join(d["delta"] for d in frames) == "".join(
            p[3] for p in pushed if p[0] == "delta" and p[1] == m
        )
    # Merged deltas are exactly the ones that did not make a frame of their own.
    n_deltas = sum(1 for p in pushed if p[0] == "delta")
    n_stream_frames = sum(1 for f in popped if f.type == "chat.stream")
    assert q.merged_total == n_deltas - n_stream_frames
    assert q.pushed_total == len(pushed)


@given(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=50))
def test_a_backlog_of_one_message_is_one_frame(deltas: list[str]) -> None:
    q = OutboundQueue(max_frames=1, max_bytes=1 << 20)
    for i, d in enumerate(deltas):
        push(q, i, d)
    assert q.frames_queued == 1 and not q.over_limit
    f = q.pop()
    assert data(f)["delta"] == "".join(deltas)
    assert data(f)["chunk"] == len(deltas) - 1
