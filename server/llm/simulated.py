"""An offline, deterministic model: English-like text paced with trio.sleep.

Faults can be set on the constructor (tests) or per turn with a magic prefix
at the very start of the last user message (end-to-end tests through the real
server, which forwards only message text)::

    [[sim:fail_after=3]] hello            -> UpstreamError(500, retryable) after 3 tokens
    [[sim:stall_first=5,tokens=10]] hi    -> 5 s silence, then 10 tokens

Keys (all numeric): ``tokens`` (answer length), ``tps`` (tokens per second),
``stall_first`` (seconds before the first token), ``stall_after`` (token count)
with ``stall_seconds``, ``fail_after`` (token count) with ``fail_status``.
Anything that does not match the strict grammar is ignored (treated as text).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace

import trio

from .base import ChatMessage, StreamEnd, StreamEvent, TokenDelta, UpstreamError, Usage

__all__ = ["SimFaults", "SimulatedProvider", "parse_magic_prefix"]

_WORD_TEXT = (
    "the a system answer stream token model server message question idea river "
    "light quiet careful simple clear small fast steady open window morning "
    "garden bridge signal pattern story reason moment detail picture number "
    "world friend paper letter music travel result choice problem method "
    "is was can will may should often rarely always gently quickly slowly "
    "builds finds keeps shows makes takes gives brings holds moves reads writes "
    "of in on with for from about under over between through after before "
    "and but so because while when"
)
_WORDS = _WORD_TEXT.split()

_MAGIC = re.compile(r"\[\[sim:((?:[a-z_]{1,16}=[0-9]{1,7}(?:\.[0-9]{1,3})?,?){1,8})\]\]")
_MAX_MAGIC_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class SimFaults:
    stall_before_first_token: float = 0.0
    stall_after_tokens: int | None = None
    stall_seconds: float = 0.0
    fail_after_tokens: int | None = None
    fail_status: int = 500
    tokens: int | None = None  # overrides the length (still capped by max_tokens)
    tokens_per_second: float | None = None


def parse_magic_prefix(text: str, base: SimFaults | None = None) -> SimFaults:
    """Read a leading ``[[sim:k=v,...]]`` from `text` into `SimFaults` (tiny, strict parser)."""
    faults = base or SimFaults()
    m = _MAGIC.match(text.lstrip())
    if m is None:
        return faults
    updates: dict[str, object] = {}
    for item in m.group(1).split(","):
        if not item:
            continue
        key, _, raw = item.partition("=")
        value = float(raw)
        if key == "stall_first":
            updates["stall_before_first_token"] = min(value, _MAX_MAGIC_SECONDS)
        elif key == "stall_after":
            updates["stall_after_tokens"] = int(value)
        elif key == "stall_seconds":
            updates["stall_seconds"] = min(value, _MAX_MAGIC_SECONDS)
        elif key == "fail_after":
            updates["fail_after_tokens"] = int(value)
        elif key == "fail_status":
            updates["fail_status"] = int(value)
        elif key == "tokens":
            updates["tokens"] = int(value)
        elif key == "tps":
            updates["tokens_per_second"] = value
        # unknown keys are ignored
    return replace(faults, **updates)  # type: ignore[arg-type]


def _stable_seed(*parts: str | int) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "big")


def generate_tokens(seed: int, count: int, *, end_sentence: bool) -> list[str]:
    """`count` word tokens (leading space, sentence punctuation) from `seed`."""
    rng = random.Random(seed)
    out: list[str] = []
    left_in_sentence = 0
    while len(out) < count:
        if left_in_sentence == 0:
            left_in_sentence = rng.randint(6, 16)
            word = rng.choice(_WORDS).capitalize()
        else:
            word = rng.choice(_WORDS)
        left_in_sentence -= 1
        if left_in_sentence == 0:
            word += rng.choice(".....!?")
        elif left_in_sentence > 2 and rng.random() < 0.08:
            word += ","
        out.append(word if not out else " " + word)
    if end_sentence and out and out[-1][-1] not in ".!?":
        out[-1] = out[-1].rstrip(",") + "."
    return out


def _fault(after: int, status: int) -> UpstreamError:
    return UpstreamError(
        f"simulated upstream failure after {after} tokens",
        retryable=status >= 500 or status == 429,
        status=status,
    )


class SimulatedProvider:
    """Deterministic offline Provider (see the module docstring for faults)."""

    def __init__(
        self,
        tokens_per_second: float = 30.0,
        max_tokens: int = 200,
        seed: int = 0,
        *,
        stall_before_first_token: float = 0.0,
        stall_after_tokens: int | None = None,
        stall_seconds: float = 0.0,
        fail_after_tokens: int | None = None,
        fail_status: int = 500,
        allow_magic: bool = True,
    ) -> None:
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        self.tokens_per_second = tokens_per_second
        self.max_tokens = max_tokens
        self.seed = seed
        self.allow_magic = allow_magic
        self.faults = SimFaults(
            stall_before_first_token=stall_before_first_token,
            stall_after_tokens=stall_after_tokens,
            stall_seconds=stall_seconds,
            fail_after_tokens=fail_after_tokens,
            fail_status=fail_status,
        )

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamEvent]]:
        return self._stream(messages, max_tokens)

    @asynccontextmanager
    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        # The generator holds no cancel scope across a yield, so it is safe under trio.
        gen = self._events(messages, max_tokens)
        try:
            yield gen
        finally:
            await gen.aclose()

    async def _events(
        self, messages: Sequence[ChatMessage], requested: int
    ) -> AsyncGenerator[StreamEvent, None]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        faults = parse_magic_prefix(last_user, self.faults) if self.allow_magic else self.faults
        length = self.max_tokens if faults.tokens is None else max(0, faults.tokens)
        n = min(length, max(0, requested))
        finish = "length" if requested < length else "stop"
        tokens = generate_tokens(
            _stable_seed(self.seed, last_user), n, end_sentence=finish == "stop"
        )
        tps = faults.tokens_per_second or self.tokens_per_second
        prompt_tokens = sum(len(m.content.split()) for m in messages)

        start = trio.current_time()
        if faults.stall_before_first_token > 0:
            await trio.sleep(faults.stall_before_first_token)
            start = trio.current_time()
        for i, tok in enumerate(tokens):
            if i == faults.fail_after_tokens:
                raise _fault(i, faults.fail_status)
            if faults.stall_after_tokens is not None and i == faults.stall_after_tokens:
                await trio.sleep(faults.stall_seconds)
                start = trio.current_time() - i / tps if tps > 0 else start
            if tps > 0:
                await trio.sleep_until(start + (i + 1) / tps)
            else:
                await trio.lowlevel.checkpoint()
            yield TokenDelta(tok)
        if faults.fail_after_tokens == n:  # fail in place of the end
            raise _fault(n, faults.fail_status)
        yield StreamEnd(finish, Usage(prompt_tokens=prompt_tokens, completion_tokens=n))

    async def aclose(self) -> None:
        return None
