"""Upstream LLM clients: the Provider interface, a simulated model, an
OpenAI-compatible client, and the resilience layer (timeouts, retries, breaker).

Self-contained: imports nothing from protocol/, store/ or the rest of server/.
"""

from __future__ import annotations

from .base import (
    ChatMessage,
    Provider,
    StreamEnd,
    StreamEvent,
    TokenDelta,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from .openai import OpenAIProvider
from .resilience import BreakerState, CircuitBreaker, ResilientUpstream, UpstreamPolicy
from .simulated import SimulatedProvider

__all__ = [
    "PROVIDER_KINDS",
    "BreakerState",
    "ChatMessage",
    "CircuitBreaker",
    "OpenAIProvider",
    "Provider",
    "ResilientUpstream",
    "SimulatedProvider",
    "StreamEnd",
    "StreamEvent",
    "TokenDelta",
    "UpstreamError",
    "UpstreamPolicy",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
    "create_provider",
]

PROVIDER_KINDS = ("simulated", "openai")


def create_provider(
    kind: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    sim_tokens_per_second: float = 30.0,
    sim_max_tokens: int = 200,
    sim_faults: bool = True,
    transport: str = "httpx",
) -> Provider:
    """Build the provider named by PARLEY_LLM_PROVIDER ("simulated" or "openai").
    `transport` ("httpx" or "h11") is the OpenAI client's HTTP stack."""
    normalized = kind.strip().lower()
    if normalized == "simulated":
        return SimulatedProvider(
            tokens_per_second=sim_tokens_per_second,
            max_tokens=sim_max_tokens,
            allow_magic=sim_faults,
        )
    if normalized == "openai":
        missing = [
            n for n, v in (("PARLEY_LLM_BASE_URL", base_url), ("PARLEY_LLM_MODEL", model)) if not v
        ]
        if missing:
            raise ValueError(f"PARLEY_LLM_PROVIDER=openai needs {' and '.join(missing)}")
        assert base_url is not None and model is not None
        return OpenAIProvider(base_url, api_key or None, model, transport=transport)
    raise ValueError(
        f"unknown LLM provider {kind!r}: PARLEY_LLM_PROVIDER must be one of "
        + ", ".join(repr(k) for k in PROVIDER_KINDS)
    )
