"""SimulatedProvider: determinism, length, pacing, faults, magic prefix; create_provider."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from server.llm import (
    ChatMessage,
    OpenAIProvider,
    SimulatedProvider,
    StreamEnd,
    TokenDelta,
    UpstreamError,
    create_provider,
)
from server.llm.base import StreamEvent
from server.llm.simulated import SimFaults, parse_magic_prefix


def msgs(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", "be brief"), ChatMessage("user", text)]


async def collect(p: SimulatedProvider, text: str, max_tokens: int = 4096) -> list[StreamEvent]:
    async with p.stream(msgs(text), max_tokens=max_tokens) as events:
        return [e async for e in events]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


async def test_deterministic_per_message_and_seed() -> None:
    p = SimulatedProvider(tokens_per_second=0, max_tokens=40)
    a1 = text_of(await collect(p, "hello there"))
    a2 = text_of(await collect(p, "hello there"))
    b = text_of(await collect(p, "something else"))
    c = text_of(
        await collect(SimulatedProvider(tokens_per_second=0, max_tokens=40, seed=7), "hello there")
    )
    assert a1 == a2
    assert a1 != b
    assert a1 != c


async def test_english_like_tokens_with_leading_spaces() -> None:
    events = await collect(SimulatedProvider(tokens_per_second=0, max_tokens=60), "hi")
    tokens = [e.text for e in events if isinstance(e, TokenDelta)]
    assert len(tokens) == 60
    assert tokens[0][0].isupper() and not tokens[0].startswith(" ")
    assert all(t.startswith(" ") and len(t) > 1 for t in tokens[1:])
    text = text_of(events)
    assert text[-1] in ".!?"
    assert any(ch in text[:-1] for ch in ".!?")  # several sentences


async def test_length_and_finish_reason() -> None:
    p = SimulatedProvider(tokens_per_second=0, max_tokens=20)
    full = await collect(p, "q", max_tokens=100)
    assert full[-1] == StreamEnd("stop", full[-1].usage)  # type: ignore[union-attr]
    end = full[-1]
    assert isinstance(end, StreamEnd) and end.usage is not None
    assert end.usage.completion_tokens == 20
    assert end.usage.prompt_tokens == 3  # "be brief" + "q"
    cut = await collect(p, "q", max_tokens=5)
    assert [type(e) for e in cut] == [TokenDelta] * 5 + [StreamEnd]
    assert isinstance(cut[-1], StreamEnd) and cut[-1].finish_reason == "length"
    # a cut answer is the prefix of the full one
    assert text_of(full).startswith(text_of(cut)[:-1])


async def test_paced_from_start_time(autojump_clock: trio.testing.MockClock) -> None:
    p = SimulatedProvider(tokens_per_second=30, max_tokens=30)
    t0 = trio.current_time()
    stamps = []
    async with p.stream(msgs("x"), max_tokens=100) as events:
        async for _e in events:
            stamps.append(trio.current_time() - t0)
            if len(stamps) == 10:
                await trio.sleep(0.2)  # a slow consumer does not push later tokens back
    assert stamps[0] == pytest.approx(1 / 30)
    assert stamps[29] == pytest.approx(1.0)


async def test_stall_before_first_token(autojump_clock: trio.testing.MockClock) -> None:
    p = SimulatedProvider(tokens_per_second=10, max_tokens=3, stall_before_first_token=5)
    t0 = trio.current_time()
    async with p.stream(msgs("x"), max_tokens=100) as events:
        first = await events.__anext__()
        assert isinstance(first, TokenDelta)
        assert trio.current_time() - t0 == pytest.approx(5.1)


async def test_stall_after_tokens(autojump_clock: trio.testing.MockClock) -> None:
    p = SimulatedProvider(tokens_per_second=10, max_tokens=4, stall_after_tokens=2, stall_seconds=3)
    t0 = trio.current_time()
    stamps = []
    async with p.stream(msgs("x"), max_tokens=100) as events:
        async for e in events:
            if isinstance(e, TokenDelta):
                stamps.append(round(trio.current_time() - t0, 6))
    assert stamps == [0.1, 0.2, 3.3, 3.4]


async def test_fail_after_tokens() -> None:
    p = SimulatedProvider(tokens_per_second=0, max_tokens=10, fail_after_tokens=3)
    got: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async with p.stream(msgs("x"), max_tokens=100) as events:
            async for e in events:
                got.append(e)
    assert len(got) == 3
    assert info.value.status == 500 and info.value.retryable
    p4 = SimulatedProvider(tokens_per_second=0, fail_after_tokens=0, fail_status=400)
    with pytest.raises(UpstreamError) as info:
        await collect(p4, "x")
    assert info.value.status == 400 and not info.value.retryable


def test_magic_prefix_parser() -> None:
    f = parse_magic_prefix("[[sim:fail_after=3,stall_first=1.5,tokens=9]] hello")
    assert f == SimFaults(fail_after_tokens=3, stall_before_first_token=1.5, tokens=9)
    assert parse_magic_prefix("hello [[sim:fail_after=3]]") == SimFaults()
    assert parse_magic_prefix("[[sim:fail_after=abc]]") == SimFaults()
    assert parse_magic_prefix("[[sim:fail_after=-1]]") == SimFaults()
    assert parse_magic_prefix("[[sim:unknown=1]] hi") == SimFaults()
    assert parse_magic_prefix("[[sim:stall_first=999999]]").stall_before_first_token == 3600


async def test_magic_prefix_in_the_last_user_message() -> None:
    p = SimulatedProvider(tokens_per_second=0, max_tokens=50)
    got: list[StreamEvent] = []
    with pytest.raises(UpstreamError):
        async with p.stream(msgs("[[sim:fail_after=2]] hi"), max_tokens=100) as events:
            async for e in events:
                got.append(e)
    assert len(got) == 2
    short = await collect(p, "[[sim:tokens=4]] hi")
    assert len(short) == 5
    off = SimulatedProvider(tokens_per_second=0, max_tokens=6, allow_magic=False)
    assert len(await collect(off, "[[sim:fail_after=2]] hi")) == 7


async def test_closing_early_is_clean() -> None:
    p = SimulatedProvider(tokens_per_second=0, max_tokens=50)
    async with p.stream(msgs("x"), max_tokens=100) as events:
        async for _ in events:
            break
    await p.aclose()


def test_create_provider() -> None:
    sim = create_provider("simulated", sim_tokens_per_second=5, sim_max_tokens=7)
    assert isinstance(sim, SimulatedProvider)
    assert (sim.tokens_per_second, sim.max_tokens) == (5, 7)
    oa = create_provider("OpenAI", base_url="http://h:1/v1/", api_key="k", model="m")
    assert isinstance(oa, OpenAIProvider)
    assert oa.url == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError, match="PARLEY_LLM_BASE_URL"):
        create_provider("openai", model="m")
    with pytest.raises(ValueError, match="one of 'simulated', 'openai'"):
        create_provider("anthropic")
