"""Text in, typed frames out; typed data in, text out.

`parse_client_frame` turns one WebSocket text frame into a `ClientFrame` or
raises `ProtocolError`; nothing else escapes it, whatever the input.

`encode_server_frame` is the hot path (one call per streamed token): it builds
a dict and hands it to orjson, with no validation. `validate_server_frame`
checks encoded text against the server models; tests use it.

Client envelope: `{"type", "requestId"?, "traceId"?, "data"?}`, nothing else.
- `requestId`: absent, null, or a string of 1 to 128 characters. When absent
  (or null) replies carry `"requestId": null`.
- `traceId`: absent, null, or a W3C trace-id (32 lower-case hex, not all zero).
- `data`: an object; for `ping` it may also be absent or null.

Faults are checked in this order, the first one answers: frame over 64 KiB
(PAYLOAD_TOO_LARGE, close 1009, nothing parsed); not JSON or not UTF-8
(VALIDATION_FAILED); not an object; `type` missing or not a string
(VALIDATION_FAILED); `type` not a client type (UNKNOWN_TYPE); unknown envelope
field; bad `requestId`; bad `traceId`; `data` not an object; `chat.send` content
over 8,000 characters (PAYLOAD_TOO_LARGE, an `error` frame); any other schema
fault of `data` (VALIDATION_FAILED, message `data.<field>: <what>`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from protocol.close_codes import CloseCode
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import (
    CLIENT_MODELS,
    MAX_CONTENT_CHARS,
    MAX_REQUEST_ID_CHARS,
    SERVER_MODELS,
    ClientData,
    ClientType,
    ServerType,
    is_trace_id,
)

__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_FRAME_BYTES",
    "ClientFrame",
    "ServerFrame",
    "encode_client_frame",
    "encode_server_frame",
    "new_trace_id",
    "parse_client_frame",
    "validate_server_frame",
]

MAX_FRAME_BYTES = 65536
"""Largest frame accepted, in UTF-8 bytes (64 KiB)."""

_ENVELOPE_KEYS = frozenset({"type", "requestId", "traceId", "data"})
_SERVER_ENVELOPE_KEYS = ("type", "requestId", "traceId", "data")
_MAX_ECHO = 64  # longest piece of client input quoted back in an error message
_ZERO_TRACE = "0" * 32


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A valid client frame. `data` is the model of `type` (`Ping()` for ping)."""

    type: ClientType
    request_id: str | None
    trace_id: str | None
    data: ClientData


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """A server frame checked by `validate_server_frame`."""

    type: ServerType
    request_id: str | None
    trace_id: str
    data: BaseModel


def _clip(value: str) -> str:
    return value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."


def _quote(value: str) -> str:
    return repr(_clip(value))


def _too_big(text: str | bytes, limit: int) -> bool:
    if isinstance(text, bytes):
        return len(text) > limit
    n = len(text)
    if n > limit:
        return True
    if n * 4 <= limit or text.isascii():
        return False
    return len(text.encode("utf-8", errors="surrogatepass")) > limit


def _valid_request_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_REQUEST_ID_CHARS


def _describe(err: ValidationError) -> str:
    errors = err.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = ".".join(_clip(str(part)) for part in first["loc"])
    where = f"data.{loc}" if loc else "data"
    message = f"{where}: {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return message


def parse_client_frame(
    text: str | bytes,
    *,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    max_content_chars: int = MAX_CONTENT_CHARS,
) -> ClientFrame:
    """Parse and validate one client frame; raise `ProtocolError` on any fault.

    The limits default to the contract's (64 KiB, 8,000 characters); the server
    passes its settings.

    `bytes` are read as UTF-8 JSON (what to do with binary WebSocket frames is
    the server's policy). The error carries the frame's `requestId` and
    `traceId` whenever they could be read and are valid.
    """
    if _too_big(text, max_frame_bytes):
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"frame over {max_frame_bytes} bytes",
            close_code=CloseCode.TOO_BIG,
        )
    try:
        raw = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        raise ProtocolError(ErrorCode.VALIDATION_FAILED, "frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.VALIDATION_FAILED, "frame must be a JSON object")

    request_id = raw.get("requestId")
    trace_id = raw.get("traceId")
    rid = request_id if _valid_request_id(request_id) else None
    tid = trace_id if is_trace_id(trace_id) else None

    def fail(code: ErrorCode, message: str) -> ProtocolError:
        return ProtocolError(code, message, request_id=rid, trace_id=tid)

    if "type" not in raw:
        raise fail(ErrorCode.VALIDATION_FAILED, "type: field required")
    kind = raw["type"]
    if not isinstance(kind, str):
        raise fail(ErrorCode.VALIDATION_FAILED, "type: must be a string")
    try:
        ctype = ClientType(kind)
    except ValueError:
        raise fail(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {_quote(kind)}") from None

    if len(raw) > 1:
        for key in raw:
            if key not in _ENVELOPE_KEYS:
                raise fail(ErrorCode.VALIDATION_FAILED, f"{_quote(key)}: unexpected field")
    if request_id is not None and rid is None:
        raise fail(
            ErrorCode.VALIDATION_FAILED,
            f"requestId: must be a string of 1 to {MAX_REQUEST_ID_CHARS} characters",
        )
    if trace_id is not None and tid is None:
        raise fail(
            ErrorCode.VALIDATION_FAILED,
            "traceId: must be 32 lower-case hexadecimal digits, not all zero",
        )

    data = raw.get("data")
    if data is None and ctype is ClientType.PING:
        data = {}
    if not isinstance(data, dict):
        what = "field required" if data is None else "must be an object"
        raise fail(ErrorCode.VALIDATION_FAILED, f"data: {what}")
    if ctype is ClientType.CHAT_SEND:
        content = data.get("content")
        if isinstance(content, str) and len(content) > max_content_chars:
            raise fail(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"data.content: at most {max_content_chars} characters",
            )
    try:
        model = CLIENT_MODELS[ctype].model_validate(
            data, context={"max_content_chars": max_content_chars}
        )
    except ValidationError as exc:
        raise fail(ErrorCode.VALIDATION_FAILED, _describe(exc)) from None
    return ClientFrame(type=ctype, request_id=rid, trace_id=tid, data=model)


def encode_client_frame(frame: ClientFrame) -> str:
    """Encode a client frame (tests, load generator). Omits null ids."""
    out: dict[str, Any] = {"type": frame.type.value}
    if frame.request_id is not None:
        out["requestId"] = frame.request_id
    if frame.trace_id is not None:
        out["traceId"] = frame.trace_id
    out["data"] = frame.data.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(out).decode("utf-8")


def encode_server_frame(
    type: str,
    data: Mapping[str, Any],
    *,
    request_id: str | None,
    trace_id: str,
) -> str:
    """Encode one server frame: `{type, requestId, traceId, data}`.

    The hot path: no validation. `data` must hold JSON-able values (str, int,
    bool, None, lists, dicts, enums); `requestId` is always present, null when
    the frame answers no request.
    """
    return orjson.dumps(
        {"type": type, "requestId": request_id, "traceId": trace_id, "data": data}
    ).decode("utf-8")


def validate_server_frame(text: str | bytes) -> ServerFrame:
    """Check that `text` is a server frame the contract allows (for tests).

    Raises `ValueError` (pydantic's `ValidationError` is one) when it is not.
    """
    raw = orjson.loads(text)
    if not isinstance(raw, dict) or tuple(raw) != _SERVER_ENVELOPE_KEYS:
        raise ValueError(f"envelope must have exactly the keys {_SERVER_ENVELOPE_KEYS}")
    stype = ServerType(raw["type"])
    request_id = raw["requestId"]
    if request_id is not None and not _valid_request_id(request_id):
        raise ValueError("requestId must be null or a 1..128 character string")
    trace_id = raw["traceId"]
    if not is_trace_id(trace_id):
        raise ValueError("traceId must be a W3C trace-id")
    data = SERVER_MODELS[stype].model_validate_json(orjson.dumps(raw["data"]), strict=True)
    return ServerFrame(type=stype, request_id=request_id, trace_id=trace_id, data=data)


def new_trace_id() -> str:
    """A fresh W3C trace-id: 32 lower-case hex digits from the OS CSPRNG, never all zero."""
    while True:
        tid = secrets.token_hex(16)
        if tid != _ZERO_TRACE:  # all zero is invalid (W3C); one chance in 2**128
            return tid
