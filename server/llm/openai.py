"""OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama, llama.cpp server).

Two transports, same semantics: ``"httpx"`` (httpx under trio through
anyio/httpcore) and ``"h11"`` (`H11Pool`: trio sockets + h11, less CPU per
token). Either way the body is consumed line by line, never read whole, and the
lines go through one function, `_events_from_lines`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from .base import ChatMessage, StreamEnd, StreamEvent, TokenDelta, UpstreamError
from .h11stream import H11Pool, H11Response
from .sse import ChunkParser, SSEDecoder

__all__ = ["TRANSPORTS", "OpenAIProvider"]

TRANSPORTS = ("httpx", "h11")

_MAX_ERROR_BODY = 4096
_MAX_JSON_BODY = 4 * 1024 * 1024


def _retryable_status(status: int) -> bool:
    return status == 429 or status == 408 or status >= 500


def _retry_after(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # HTTP-date form: ignored


async def _read_capped(resp: httpx.Response, cap: int) -> bytes:
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) >= cap:
            break
    return bytes(buf[:cap])


def _error_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
    except ValueError:
        pass
    return f"upstream HTTP {status}: {text[:300]}"


def _status_error(status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """An HTTP error answer (status >= 400) as the error both transports raise."""
    return UpstreamError(
        _error_message(status, body),
        retryable=_retryable_status(status),
        status=status,
        retry_after=_retry_after(retry_after),
    )


class OpenAIProvider:
    """Streams `POST {base_url}/chat/completions` with ``stream: true``.

    `base_url` includes the version prefix, e.g. ``http://127.0.0.1:8080/v1``.
    `transport` is ``"httpx"`` or ``"h11"`` (see the module docstring). Pass
    `http_client` to share an httpx pool (it is then not closed by `aclose`).
    Read timeouts are left to `ResilientUpstream` (first token / gap / total);
    `read_timeout` is only a safety net for direct use, and like `max_connections`
    applies to the httpx transport only.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float | None = None,
        max_connections: int | None = 2000,
        include_usage: bool = True,
        extra_body: dict[str, Any] | None = None,
        transport: str = "httpx",
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: one of {', '.join(TRANSPORTS)}")
        if http_client is not None and transport != "httpx":
            raise ValueError("http_client is for the httpx transport only")
        if not base_url:
            raise ValueError("OpenAIProvider needs a base_url, e.g. http://127.0.0.1:8080/v1")
        if not model:
            raise ValueError("OpenAIProvider needs a model name")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.include_usage = include_usage
        self.extra_body = dict(extra_body or {})
        self.transport = transport
        self._headers = {"Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._pool: H11Pool | None = None
        self._h11_headers = [("Authorization", f"Bearer {api_key}")] if api_key else []
        self._owns_client = http_client is None
        if transport == "h11":
            self._pool = H11Pool(connect_timeout=connect_timeout)
        else:
            self._client = http_client or httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=connect_timeout,
                    read=read_timeout,
                    write=connect_timeout,
                    pool=connect_timeout,
                ),
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                ),
            )

    def request_body(self, messages: Sequence[ChatMessage], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "stream": True,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AbstractAsyncContextManager[AsyncIterator[StreamEvent]]:
        if self._pool is not None:
            return self._stream_h11(self._pool, messages, max_tokens)
        return self._stream(messages, max_tokens)

    @asynccontextmanager
    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        body = self.request_body(messages, max_tokens)
        try:
            cm = self._client.stream("POST", self.url, json=body, headers=self._headers)
            resp = await cm.__aenter__()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream request failed: {exc!r}", retryable=True) from exc
        try:
            if resp.status_code >= 400:
                try:
                    raw = await _read_capped(resp, _MAX_ERROR_BODY)
                except httpx.HTTPError:
                    raw = b""
                raise _status_error(resp.status_code, raw, resp.headers.get("retry-after"))
            if resp.headers.get("content-type", "").startswith("application/json"):
                gen = self._json_events(resp)
            else:
                gen = _events_from_lines(resp.aiter_lines(), httpx.HTTPError)
            try:
                yield gen
            finally:
                await gen.aclose()
        finally:
            await cm.__aexit__(None, None, None)

    async def _json_events(self, resp: httpx.Response) -> AsyncGenerator[StreamEvent, None]:
        # The server ignored stream=true: one whole completion.
        try:
            raw = await _read_capped(resp, _MAX_JSON_BODY)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream stream broken: {exc!r}", retryable=True) from exc
        for event in _events_from_json(raw):
            yield event

    @asynccontextmanager
    async def _stream_h11(
        self, pool: H11Pool, messages: Sequence[ChatMessage], max_tokens: int
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        body = self.request_body(messages, max_tokens)
        async with pool.stream_post(self.url, body, self._h11_headers) as resp:
            if resp.status >= 400:
                try:
                    raw = await resp.read(_MAX_ERROR_BODY)
                except UpstreamError:
                    raw = b""
                raise _status_error(resp.status, raw, resp.headers.get("retry-after"))
            if resp.headers.get("content-type", "").startswith("application/json"):
                gen = _h11_json_events(resp)
            else:
                gen = _events_from_lines(resp.aiter_lines())
            try:
                yield gen
            finally:
                await gen.aclose()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        elif self._owns_client:
            await self._client.aclose()


async def _events_from_lines(
    lines: AsyncIterator[str], broken: type[Exception] | tuple[type[Exception], ...] = ()
) -> AsyncGenerator[StreamEvent, None]:
    """SSE lines (no line endings) to events; `broken` (the transport's errors while
    reading) become a retryable `UpstreamError`. Closes `lines` when done."""
    decoder = SSEDecoder()
    parser = ChunkParser()
    try:
        async for line in lines:
            payload = decoder.feed(line)
            if payload is None:
                continue
            for event in parser.feed(payload, decoder.parsed):
                yield event
            if parser.done:
                return
        tail = decoder.flush()
        if tail is not None:
            for event in parser.feed(tail):
                yield event
        for event in parser.finish():
            yield event
    except broken as exc:
        raise UpstreamError(f"upstream stream broken: {exc!r}", retryable=True) from exc
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()


async def _h11_json_events(resp: H11Response) -> AsyncGenerator[StreamEvent, None]:
    for event in _events_from_json(await resp.read(_MAX_JSON_BODY)):
        yield event


def _events_from_json(raw: bytes) -> list[StreamEvent]:
    parser = ChunkParser()
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise UpstreamError("upstream sent invalid JSON", retryable=True) from exc
    if not isinstance(obj, dict):
        raise UpstreamError("upstream sent a non-object body", retryable=True)
    # Reuse the chunk parser for "error" and "usage"; the message sits in choices[0].message.
    parser.feed(json.dumps({k: v for k, v in obj.items() if k != "choices"}))
    events: list[StreamEvent] = []
    choices = obj.get("choices")
    reason: str | None = None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            events.append(TokenDelta(content))
        fr = choices[0].get("finish_reason")
        reason = fr if isinstance(fr, str) else None
    events.append(StreamEnd(reason, parser.usage))
    return events
