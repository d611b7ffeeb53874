"""SSE decoding and chat-completion chunk parsing (pure)."""

from __future__ import annotations

import json

import pytest

from server.llm import StreamEnd, TokenDelta, UpstreamError, Usage
from server.llm.sse import ChunkParser, SSEDecoder


def decode(lines: list[str]) -> list[str]:
    d = SSEDecoder()
    out = [p for line in lines if (p := d.feed(line)) is not None]
    tail = d.flush()
    return [*out, tail] if tail is not None else out


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def test_data_lines_with_and_without_space() -> None:
    assert decode(['data: {"a":1}', "", 'data:{"b":2}', ""]) == ['{"a":1}', '{"b":2}']


def test_comments_event_id_retry_fields_are_ignored() -> None:
    lines = [": keep-alive", "event: message", "id: 7", "retry: 1000", "data: [DONE]", ""]
    assert decode(lines) == ["[DONE]"]


def test_multi_line_data_is_joined_until_complete() -> None:
    assert decode(["data: {", 'data: "a": 1', "data: }", ""]) == ['{\n"a": 1\n}']


def test_crlf_and_missing_blank_lines() -> None:
    assert decode(['data: {"a":1}\r', 'data: {"b":2}\r', "data: [DONE]"]) == [
        '{"a":1}',
        '{"b":2}',
        "[DONE]",
    ]


def test_incomplete_payload_dispatched_at_blank_line_or_flush() -> None:
    assert decode(["data: not json", ""]) == ["not json"]
    assert decode(["data: {"]) == ["{"]


def test_chunks_to_events_with_usage_and_done() -> None:
    p = ChunkParser()
    first = json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    assert p.feed(first) == []  # role-only / empty content: no delta
    assert p.feed(chunk("Hel")) == [TokenDelta("Hel")]
    assert p.feed(chunk("lo")) == [TokenDelta("lo")]
    assert p.feed(chunk(None, "stop")) == []
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert p.feed(json.dumps({"choices": [], "usage": usage})) == []
    assert p.feed("[DONE]") == [StreamEnd("stop", Usage(9, 2))]
    assert p.feed(chunk("late")) == []  # nothing after [DONE]


def test_content_and_finish_in_one_chunk() -> None:
    p = ChunkParser()
    assert p.feed(chunk("x", "length")) == [TokenDelta("x")]
    assert p.feed("[DONE]") == [StreamEnd("length", None)]


@pytest.mark.parametrize(
    ("payload", "retryable", "status"),
    [
        ({"error": {"message": "overloaded", "code": 503}}, True, 503),
        ({"error": {"message": "context too long", "code": 400}}, False, 400),
        ({"error": {"message": "weird", "code": "server_error"}}, True, None),
        ({"error": "plain string"}, True, None),
        ({"object": "error", "message": "bad", "code": 422}, False, 422),
    ],
)
def test_error_object_mid_stream(
    payload: dict[str, object], retryable: bool, status: int | None
) -> None:
    p = ChunkParser()
    p.feed(chunk("a"))
    with pytest.raises(UpstreamError) as info:
        p.feed(json.dumps(payload))
    assert info.value.retryable is retryable
    assert info.value.status == status


def test_invalid_json_is_a_retryable_error() -> None:
    with pytest.raises(UpstreamError) as info:
        ChunkParser().feed("{nope")
    assert info.value.retryable
    with pytest.raises(UpstreamError):
        ChunkParser().feed("[1, 2]")


def test_end_of_body_without_done() -> None:
    p = ChunkParser()
    p.feed(chunk("a", "stop"))
    assert p.finish() == [StreamEnd("stop", None)]
    cut = ChunkParser()
    cut.feed(chunk("a"))
    with pytest.raises(UpstreamError) as info:
        cut.finish()
    assert info.value.retryable
