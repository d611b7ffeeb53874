"""OpenAIProvider over httpx.MockTransport: request shape, status mapping, parsing."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from server.llm import ChatMessage, OpenAIProvider, StreamEnd, TokenDelta, UpstreamError, Usage
from server.llm.base import StreamEvent

MSGS = [ChatMessage("system", "s"), ChatMessage("user", "hi")]


def provider(handler: Callable[[httpx.Request], httpx.Response]) -> OpenAIProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider("http://up.test/v1/", "sk-test", "m1", http_client=client)


def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\n\n" for p in payloads).encode()


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


async def run(p: OpenAIProvider) -> list[StreamEvent]:
    async with p.stream(MSGS, max_tokens=33) as events:
        return [e async for e in events]


async def test_request_shape_and_stream() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        body = sse(chunk("Hi"), chunk(" there"), chunk(None, "stop"), "[DONE]")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    events = await run(provider(handler))
    assert events == [TokenDelta("Hi"), TokenDelta(" there"), StreamEnd("stop", None)]
    req = seen[0]
    assert str(req.url) == "http://up.test/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    body = json.loads(req.content)
    assert body["stream"] is True and body["max_tokens"] == 33 and body["model"] == "m1"
    assert body["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
    ]
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (502, True), (503, True), (429, True), (400, False), (401, False), (404, False)],
)
async def test_http_status_mapping(status: int, retryable: bool) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"error": {"message": "nope", "code": status}},
            headers={"retry-after": "2"},
        )

    with pytest.raises(UpstreamError) as info:
        await run(provider(handler))
    assert info.value.status == status
    assert info.value.retryable is retryable
    assert info.value.retry_after == 2.0
    assert "nope" in info.value.message


async def test_connection_error_is_retryable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    with pytest.raises(UpstreamError) as info:
        await run(provider(handler))
    assert info.value.retryable and info.value.status is None


async def test_non_streaming_json_answer_is_accepted() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        )

    assert await run(provider(handler)) == [TokenDelta("whole"), StreamEnd("stop", Usage(3, 1))]


async def test_body_cut_before_done_is_retryable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(chunk("a"))
        )

    got: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async with provider(handler).stream(MSGS, max_tokens=5) as events:
            async for e in events:
                got.append(e)
    assert got == [TokenDelta("a")]
    assert info.value.retryable


async def test_owned_client_is_closed_shared_one_is_not() -> None:
    shared = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    p = OpenAIProvider("http://x/v1", None, "m", http_client=shared)
    await p.aclose()
    assert not shared.is_closed
    own = OpenAIProvider("http://x/v1", None, "m")
    await own.aclose()
    assert own._client.is_closed
    await shared.aclose()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        OpenAIProvider("", None, "m")
    with pytest.raises(ValueError):
        OpenAIProvider("http://x/v1", None, "")
