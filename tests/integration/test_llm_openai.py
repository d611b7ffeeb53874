"""OpenAIProvider + ResilientUpstream against the real fake upstream process
(benchmarks/fake_upstream.py), started once for the module on a free port. Every
provider test runs on both transports (httpx and the h11 pool)."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from benchmarks.fake_upstream import (
    expected_text,
    running_fake_upstream,
    start_fake_upstream_process,
)
from server.llm import (
    ChatMessage,
    OpenAIProvider,
    ResilientUpstream,
    StreamEnd,
    TokenDelta,
    UpstreamError,
    UpstreamPolicy,
    UpstreamTimeout,
)
from server.llm.base import StreamEvent

TRANSPORTS = ["httpx", "h11"]

FAST = UpstreamPolicy(
    first_token_timeout=0.3, gap_timeout=0.3, total_timeout=10, backoff_base=0.02, backoff_max=0.1
)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_fake_upstream(tokens=10, tps=500) as (proc, url):
        yield url
    assert proc.returncode == 0  # clean exit on SIGTERM


@pytest.fixture(params=TRANSPORTS)
async def provider(base_url: str, request: pytest.FixtureRequest) -> Any:
    p = OpenAIProvider(base_url, "sk-fake", "fake-model", transport=request.param)
    assert p.transport == request.param
    yield p
    await p.aclose()


def magic(scenario: str | None = None, **overrides: Any) -> str:
    if scenario is not None:
        overrides["scenario"] = scenario
    return f"[[fake:{json.dumps(overrides)}]] hello"


def new_scenario() -> str:
    return uuid.uuid4().hex


async def requests_seen(base_url: str, scenario: str) -> int:
    async with httpx.AsyncClient() as c:
        r = await c.get(base_url.removesuffix("/v1") + "/stats")
    return int(r.json()["requests"].get(scenario, 0))


async def drain(
    up: Any, text: str, max_tokens: int = 100
) -> tuple[list[StreamEvent], UpstreamError | None]:
    got: list[StreamEvent] = []
    try:
        async with up.stream([ChatMessage("user", text)], max_tokens=max_tokens) as events:
            async for e in events:
                got.append(e)
    except UpstreamError as exc:
        return got, exc
    return got, None


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_normal_stream_text_finish_and_usage(provider: OpenAIProvider) -> None:
    got, err = await drain(ResilientUpstream(provider, FAST), "hi")
    assert err is None
    assert text_of(got) == expected_text(10)
    end = got[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "stop"
    assert end.usage is not None and end.usage.completion_tokens == 10


async def test_max_tokens_cut_gives_length(provider: OpenAIProvider) -> None:
    got, err = await drain(provider, "hi", max_tokens=4)
    assert err is None and text_of(got) == expected_text(4)
    assert isinstance(got[-1], StreamEnd) and got[-1].finish_reason == "length"


async def test_500_twice_then_success(provider: OpenAIProvider, base_url: str) -> None:
    sc = new_scenario()
    retries: list[int] = []
    firsts: list[float] = []
    up = ResilientUpstream(
        provider, FAST, on_retry=lambda n, e: retries.append(n), on_first_token=firsts.append
    )
    got, err = await drain(up, magic(sc, status=500, status_times=2))
    assert err is None and text_of(got) == expected_text(10)
    assert retries == [1, 2]
    assert len(firsts) == 1
    assert await requests_seen(base_url, sc) == 3


async def test_400_is_not_retried(provider: OpenAIProvider, base_url: str) -> None:
    sc = new_scenario()
    got, err = await drain(ResilientUpstream(provider, FAST), magic(sc, status=400))
    assert got == [] and err is not None
    assert err.status == 400 and not err.retryable
    assert await requests_seen(base_url, sc) == 1


async def test_429_with_retry_after_is_retried(provider: OpenAIProvider, base_url: str) -> None:
    sc = new_scenario()
    up = ResilientUpstream(provider, FAST)
    _got, err = await drain(up, magic(sc, status=429, status_times=1, retry_after=0))
    assert err is None and await requests_seen(base_url, sc) == 2


async def test_stall_before_first_token_times_out_after_retries(
    provider: OpenAIProvider, base_url: str
) -> None:
    sc = new_scenario()
    t0 = time.monotonic()
    got, err = await drain(ResilientUpstream(provider, FAST), magic(sc, stall_first=5))
    elapsed = time.monotonic() - t0
    assert isinstance(err, UpstreamTimeout) and err.phase == "first_token"
    assert got == []
    assert await requests_seen(base_url, sc) == 3
    assert 0.9 <= elapsed < 3


async def test_mid_stream_error_after_tokens_is_not_retried(
    provider: OpenAIProvider, base_url: str
) -> None:
    sc = new_scenario()
    got, err = await drain(ResilientUpstream(provider, FAST), magic(sc, error_after=3))
    assert text_of(got) == expected_text(3)
    assert err is not None and "mid-stream" in err.message
    assert await requests_seen(base_url, sc) == 1


async def test_connection_drop_mid_stream(provider: OpenAIProvider, base_url: str) -> None:
    sc = new_scenario()
    got, err = await drain(ResilientUpstream(provider, FAST), magic(sc, drop_after=4))
    assert text_of(got) == expected_text(4)
    assert err is not None and err.retryable
    assert await requests_seen(base_url, sc) == 1


async def test_drop_before_first_token_is_retried(provider: OpenAIProvider, base_url: str) -> None:
    sc = new_scenario()
    got, err = await drain(ResilientUpstream(provider, FAST), magic(sc, drop_after=0))
    assert got == [] and err is not None and err.retryable
    assert await requests_seen(base_url, sc) == 3


async def test_gap_timeout(provider: OpenAIProvider) -> None:
    got, err = await drain(ResilientUpstream(provider, FAST), magic(stall_after=2, stall_seconds=3))
    assert text_of(got) == expected_text(2)
    assert isinstance(err, UpstreamTimeout) and err.phase == "gap"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_refused_is_retryable(transport: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider(f"http://127.0.0.1:{port}/v1", None, "m", transport=transport)
    try:
        _got, err = await drain(p, "hi")
    finally:
        await p.aclose()
    assert err is not None and err.retryable and err.status is None


async def test_h11_keeps_the_connection_after_done(base_url: str) -> None:
    """The reader stops at [DONE]; the body's end, already received, still lets the
    connection go back to the pool, and the next stream reuses it."""
    p = OpenAIProvider(base_url, None, "m", transport="h11")
    assert p._pool is not None
    try:
        for _ in range(3):
            got, err = await drain(p, "hi")
            assert err is None and text_of(got) == expected_text(10)
            assert p._pool.idle_count() == 1
        _got, err = await drain(p, magic(status=400))
        assert err is not None and err.status == 400
        assert p._pool.idle_count() == 1  # an error body read to its end: kept too
        _got, err = await drain(p, magic(drop_after=2))
        assert err is not None and err.retryable
        assert p._pool.idle_count() == 0  # a broken connection is not
    finally:
        await p.aclose()


async def test_many_concurrent_streams(provider: OpenAIProvider) -> None:
    # Correctness under concurrency, not speed: timeouts roomy enough for a loaded 2-core CI box.
    up = ResilientUpstream(
        provider, UpstreamPolicy(first_token_timeout=10, gap_timeout=10, total_timeout=60)
    )
    texts: list[str] = []

    async def one() -> None:
        got, err = await drain(up, magic(tokens=20, tps=100))
        assert err is None
        texts.append(text_of(got))

    async with trio.open_nursery() as n:
        for _ in range(200):
            n.start_soon(one)
    assert texts == [expected_text(20)] * 200


async def test_raw_chunks_carry_t_ns_and_header_overrides(base_url: str) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    headers = {"X-Fake-Upstream": json.dumps({"tokens": 3, "tps": 0})}
    payloads = []
    async with (
        httpx.AsyncClient() as c,
        c.stream("POST", base_url + "/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                payloads.append(json.loads(line[6:]))
    now = time.perf_counter_ns()
    contents = [p["choices"][0]["delta"].get("content") for p in payloads if p["choices"]]
    assert "".join(c for c in contents if c) == expected_text(3)
    stamps = [p["t_ns"] for p in payloads]
    assert stamps == sorted(stamps) and 0 < now - stamps[-1] < 5e9


async def test_non_streaming_request_and_health(base_url: str) -> None:
    async with httpx.AsyncClient() as c:
        health = await c.get(base_url.removesuffix("/v1") + "/health")
        r = await c.post(
            base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
        )
    assert health.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == expected_text(5)
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_process_exits_zero_on_sigint() -> None:
    proc, _ = start_fake_upstream_process()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(5) == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_silent_server_times_out_while_waiting_for_headers(transport: str) -> None:
    """The first-token deadline also covers connecting and the response head."""
    accepted: list[trio.SocketStream] = []

    async def silent(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, silent, 0)
        port = listeners[0].socket.getsockname()[1]
        p = OpenAIProvider(f"http://127.0.0.1:{port}/v1", None, "m", transport=transport)
        policy = UpstreamPolicy(first_token_timeout=0.2, max_retries=1, backoff_base=0.01)
        try:
            got, err = await drain(ResilientUpstream(p, policy), "hi")
        finally:
            await p.aclose()
        nursery.cancel_scope.cancel()
    assert got == []
    assert isinstance(err, UpstreamTimeout) and err.phase == "first_token"
    assert len(accepted) == 2  # one retry, on a fresh connection
