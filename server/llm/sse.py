"""Server-sent events, as OpenAI-compatible chat-completion streams use them.

`SSEDecoder` is pure (no I/O): feed it lines, get back the payloads of `data:`
fields. `ChunkParser` turns those payloads into `TokenDelta` / `StreamEnd`.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import StreamEnd, StreamEvent, TokenDelta, UpstreamError, Usage

__all__ = ["DONE", "ChunkParser", "SSEDecoder"]

DONE = "[DONE]"


_UNPARSED: Any = object()


def _parse(payload: str) -> Any:
    """The payload's JSON value, or ``_UNPARSED`` if it is not (yet) complete JSON."""
    try:
        return orjson.loads(payload)
    except ValueError:
        return _UNPARSED


class SSEDecoder:
    """Line-oriented SSE decoder.

    Per the SSE spec, an event's `data:` lines are joined with "\\n" and the
    event is dispatched at a blank line. Leniently, a payload is dispatched as
    soon as it is a complete JSON value or ``[DONE]``, so a server that forgets
    the blank line between events still works. Comments (``:``), ``event:``,
    ``id:`` and ``retry:`` fields are ignored.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        # The JSON value of the payload `feed` just returned, when it already parsed it (so
        # each token's JSON is parsed once, not twice); `_UNPARSED` otherwise.
        self.parsed: Any = _UNPARSED

    def feed(self, line: str) -> str | None:
        """Feed one line (without its line ending); returns a payload or None."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if not sep:
            name, value = line, ""
        if value.startswith(" "):
            value = value[1:]
        if name != "data":
            return None
        self._data.append(value)
        payload = "\n".join(self._data)
        parsed = _UNPARSED if payload == DONE else _parse(payload)
        if payload == DONE or parsed is not _UNPARSED:
            self._data.clear()
            self.parsed = parsed
            return payload
        return None

    def _dispatch(self) -> str | None:
        self.parsed = _UNPARSED
        if not self._data:
            return None
        payload = "\n".join(self._data)
        self._data.clear()
        return payload

    def flush(self) -> str | None:
        """End of stream: whatever is pending (a spec-compliant decoder would drop it)."""
        return self._dispatch()


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_from(obj: dict[str, Any]) -> UpstreamError:
    err = obj.get("error")
    if isinstance(err, dict):
        message = str(err.get("message") or err.get("type") or "upstream error")
        code = _as_int(err.get("code")) or _as_int(err.get("status"))
    else:
        message = str(err if err is not None else obj.get("message") or "upstream error")
        code = _as_int(obj.get("code"))
    retryable = not (code is not None and 400 <= code < 500 and code != 429)
    return UpstreamError(f"upstream stream error: {message}", retryable=retryable, status=code)


class ChunkParser:
    """Turns `data:` payloads of a chat-completions stream into events.

    `feed()` returns the events of one payload: a `TokenDelta` for non-empty
    ``choices[0].delta.content``; `StreamEnd` at ``[DONE]`` carrying the last
    ``finish_reason`` and ``usage`` seen. An ``{"error": ...}`` payload raises
    `UpstreamError`. `finish()` is for the end of the body without ``[DONE]``.
    """

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, payload: str, parsed: Any = _UNPARSED) -> list[StreamEvent]:
        """One payload; ``parsed`` is its JSON value when the caller has it already."""
        if self.done:
            return []
        if payload == DONE:
            self.done = True
            return [StreamEnd(self.finish_reason, self.usage)]
        obj = parsed
        if obj is _UNPARSED:
            try:
                obj = orjson.loads(payload)
            except ValueError as exc:
                raise UpstreamError(
                    f"upstream sent invalid JSON in stream: {payload[:200]!r}", retryable=True
                ) from exc
        if not isinstance(obj, dict):
            raise UpstreamError("upstream sent a non-object chunk", retryable=True)
        if "error" in obj or obj.get("object") == "error":
            raise _error_from(obj)
        events: list[StreamEvent] = []
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                prompt_tokens=_as_int(usage.get("prompt_tokens")) or 0,
                completion_tokens=_as_int(usage.get("completion_tokens")) or 0,
            )
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    events.append(TokenDelta(content))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        return events

    def finish(self) -> list[StreamEvent]:
        """The body ended. Without ``[DONE]``, a seen finish_reason still ends the
        stream cleanly; otherwise the stream was cut (retryable error)."""
        if self.done:
            return []
        if self.finish_reason is not None:
            self.done = True
            return [StreamEnd(self.finish_reason, self.usage)]
        raise UpstreamError("upstream stream ended before [DONE]", retryable=True)
