"""Types shared by every upstream LLM client: messages, stream events, errors, the Provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "ChatMessage",
    "Provider",
    "Role",
    "StreamEnd",
    "StreamEvent",
    "TimeoutPhase",
    "TokenDelta",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
]

Role: TypeAlias = Literal["system", "user", "assistant"]
TimeoutPhase: TypeAlias = Literal["first_token", "gap", "total"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """A piece of the answer's text (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a successful stream. `finish_reason` is the upstream's
    ("stop", "length", ...) or None when it did not say."""

    finish_reason: str | None
    usage: Usage | None = None


StreamEvent: TypeAlias = TokenDelta | StreamEnd


class UpstreamError(Exception):
    """The upstream failed. `retryable` says whether the same request may succeed
    later (5xx, 429, connection faults, timeouts); `status` is the HTTP status
    when there was one; `retry_after` the upstream's Retry-After in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
            f"status={self.status})"
        )


class UpstreamTimeout(UpstreamError):
    """No first token, a gap between deltas, or the whole answer took too long."""

    def __init__(self, phase: TimeoutPhase, seconds: float) -> None:
        super().__init__(f"upstream {phase} timeout after {seconds:g}s", retryable=True)
        self.phase: TimeoutPhase = phase
        self.seconds = seconds


class UpstreamUnavailable(UpstreamError):
    """The circuit breaker is open: the upstream is skipped (fail fast)."""

    def __init__(self, message: str = "upstream unavailable (circuit open)") -> None:
        super().__init__(message, retryable=True)


@runtime_checkable
class Provider(Protocol):
    """An upstream chat-completion model.

    `stream()` returns an async context manager; entering it gives an async
    iterator of events: zero or more `TokenDelta`, then exactly one `StreamEnd`
    (or an `UpstreamError` is raised, from entering or from iterating). Leaving
    the `async with` always releases the HTTP response, even when the caller
    stops early or is cancelled::

        async with provider.stream(messages, max_tokens=4096) as events:
            async for event in events:
                ...
    """

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamEvent]]: ...

    async def aclose(self) -> None: ...
