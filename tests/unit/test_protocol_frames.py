"""Frame models: client strictness, server shapes, helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.codec import encode_server_frame, new_trace_id, validate_server_frame
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import (
    CLIENT_MODELS,
    DONE_STATUSES,
    SERVER_MODELS,
    AuthRefresh,
    ChatAck,
    ChatCancel,
    ChatDone,
    ChatMessage,
    ChatResume,
    ChatResumed,
    ChatSend,
    ChatStream,
    ClientType,
    DoneStatus,
    ErrorData,
    FinishReason,
    Message,
    MessageStatus,
    Ping,
    Pong,
    Role,
    ServerDraining,
    ServerType,
    SessionReady,
    format_timestamp,
    is_trace_id,
    is_uuid,
)

CONV = "0b7e6b3c-7d0a-4a9e-9a57-5b8c5f1e2d3c"
MSG = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
MSG2 = "9c858901-8a57-4791-81fe-4c455b099bc9"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
NOW = "2024-05-01T12:00:00.123Z"


def test_type_lists_are_the_contracts() -> None:
    assert {t.value for t in ClientType} == {
        "chat.send",
        "chat.cancel",
        "chat.resume",
        "auth.refresh",
        "ping",
    }
    assert {t.value for t in ServerType} == {
        "session.ready",
        "chat.ack",
        "chat.stream",
        "chat.done",
        "chat.message",
        "chat.resumed",
        "error",
        "server.draining",
        "pong",
    }
    assert set(CLIENT_MODELS) == set(ClientType)
    assert set(SERVER_MODELS) == set(ServerType)


def test_enums() -> None:
    assert {r.value for r in Role} == {"user", "assistant", "system"}
    assert {s.value for s in MessageStatus} == {
        "streaming",
        "completed",
        "cancelled",
        "truncated",
        "failed",
        "interrupted",
    }
    assert {s.value for s in DoneStatus} == DONE_STATUSES
    assert {s.value for s in MessageStatus} - {"streaming"} == DONE_STATUSES
    assert FinishReason.LENGTH == "length"


# -- client models --------------------------------------------------------------


def test_chat_send_fields_and_normalisation() -> None:
    m = ChatSend.model_validate({"conversationId": CONV.upper(), "messageId": MSG, "content": "hi"})
    assert m.conversationId == CONV
    assert m.messageId == MSG
    assert m.content == "hi"
    with pytest.raises(ValidationError):
        m.content = "x"  # frozen


@pytest.mark.parametrize(
    "bad",
    [
        "",
        CONV.replace("-", ""),
        "{" + CONV + "}",
        "urn:uuid:" + CONV,
        CONV + "\n",
        CONV[:-1] + "g",
        CONV + "0",
    ],
)
def test_uuid_must_be_canonical(bad: str) -> None:
    assert not is_uuid(bad)
    with pytest.raises(ValidationError):
        ChatCancel.model_validate({"conversationId": bad, "messageId": MSG})


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (ChatSend, {"conversationId": CONV, "messageId": MSG, "content": ""}),
        (ChatSend, {"conversationId": CONV, "messageId": MSG, "content": "x" * 8001}),
        (ChatSend, {"conversationId": CONV, "messageId": MSG, "content": 5}),
        (ChatSend, {"conversationId": CONV, "messageId": MSG}),
        (ChatSend, {"conversationId": CONV, "messageId": MSG, "content": "x", "extra": 1}),
        (ChatCancel, {"conversationId": CONV}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": -1}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": "3"}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": 3.0}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": True}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": 2**53}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": 0, "lastChunk": -2}),
        (ChatResume, {"conversationId": CONV, "lastMessageSeq": 0, "lastChunk": "1"}),
        (AuthRefresh, {"accessToken": ""}),
        (AuthRefresh, {"accessToken": "t" * 8193}),
        (AuthRefresh, {"accessToken": 1}),
        (Ping, {"x": 1}),
    ],
)
def test_client_models_refuse(model: Any, data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(data)


def test_client_models_accept_edges() -> None:
    ChatSend.model_validate({"conversationId": CONV, "messageId": MSG, "content": "x" * 8000})
    r = ChatResume.model_validate({"conversationId": CONV, "lastMessageSeq": 0})
    assert r.lastChunk is None
    r = ChatResume.model_validate({"conversationId": CONV, "lastMessageSeq": 0, "lastChunk": -1})
    assert r.lastChunk == -1
    r = ChatResume.model_validate({"conversationId": CONV, "lastMessageSeq": 7, "lastChunk": None})
    assert r.lastChunk is None
    AuthRefresh.model_validate({"accessToken": "t" * 8192})
    Ping.model_validate({})


# -- server models --------------------------------------------------------------


def _message(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": MSG,
        "conversationId": CONV,
        "seq": 2,
        "role": "assistant",
        "content": "hello",
        "status": "completed",
        "finishReason": "stop",
        "createdAt": NOW,
    }
    base.update(over)
    return base


GOOD_SERVER: list[tuple[str, dict[str, Any], type]] = [
    (
        "session.ready",
        {
            "userId": "u1",
            "sessionId": "s1",
            "connectionId": "c1",
            "serverTime": NOW,
            "limits": {
                "maxFrameBytes": 65536,
                "maxContentChars": 8000,
                "maxConcurrentTurns": 3,
                "chatSendPerMinute": 20,
                "somethingNew": 1,
            },
        },
        SessionReady,
    ),
    (
        "chat.ack",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "userSeq": 1,
            "assistantMessageId": MSG2,
            "assistantSeq": 2,
            "duplicate": False,
        },
        ChatAck,
    ),
    (
        "chat.stream",
        {"conversationId": CONV, "messageId": MSG, "seq": 2, "chunk": 0, "delta": "He"},
        ChatStream,
    ),
    (
        "chat.done",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "seq": 2,
            "status": "truncated",
            "finishReason": "length",
            "lastChunk": 4095,
            "usage": {"outputTokens": 4096, "inputTokens": 12},
        },
        ChatDone,
    ),
    (
        "chat.done",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "seq": 2,
            "status": "failed",
            "finishReason": None,
            "lastChunk": -1,
            "usage": {"outputTokens": 0},
        },
        ChatDone,
    ),
    ("chat.message", _message(), ChatMessage),
    ("chat.message", _message(status="streaming", finishReason=None, role="user"), ChatMessage),
    (
        "chat.resumed",
        {"conversationId": CONV, "replayed": 3, "live": True, "reset": False},
        ChatResumed,
    ),
    (
        "chat.resumed",
        {"conversationId": CONV, "replayed": 0, "live": False, "reset": True},
        ChatResumed,
    ),
    (
        "error",
        {"code": "RATE_LIMITED", "class": "RLIMIT", "message": "m", "retryable": True},
        ErrorData,
    ),
    (
        "error",
        {
            "code": "RATE_LIMITED",
            "class": "RLIMIT",
            "message": "m",
            "retryable": True,
            "retryAfterMs": 100,
        },
        ErrorData,
    ),
    ("server.draining", {"reconnectAfterMs": 2000}, ServerDraining),
    ("pong", {}, Pong),
]


@pytest.mark.parametrize(("type_", "data", "model"), GOOD_SERVER)
def test_server_frames_validate(type_: str, data: dict[str, Any], model: type) -> None:
    text = encode_server_frame(type_, data, request_id="r1", trace_id=TRACE)
    frame = validate_server_frame(text)
    assert frame.type == type_
    assert frame.request_id == "r1"
    assert frame.trace_id == TRACE
    assert isinstance(frame.data, model)
    # with a null requestId too
    assert (
        validate_server_frame(
            encode_server_frame(type_, data, request_id=None, trace_id=TRACE)
        ).request_id
        is None
    )


BAD_SERVER: list[tuple[str, dict[str, Any]]] = [
    ("chat.stream", {"conversationId": CONV, "messageId": MSG, "seq": 0, "chunk": 0, "delta": "x"}),
    ("chat.stream", {"conversationId": CONV, "messageId": MSG, "seq": 1, "chunk": 0, "delta": ""}),
    (
        "chat.stream",
        {"conversationId": CONV, "messageId": MSG, "seq": "1", "chunk": 0, "delta": "x"},
    ),
    (
        "chat.stream",
        {"conversationId": CONV, "messageId": MSG, "seq": 1, "chunk": 0, "delta": "x", "x": 1},
    ),
    (
        "chat.ack",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "userSeq": 1,
            "assistantMessageId": MSG2,
            "assistantSeq": 3,
            "duplicate": False,
        },
    ),
    (
        "chat.done",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "seq": 2,
            "status": "truncated",
            "finishReason": "stop",
            "lastChunk": 1,
            "usage": {"outputTokens": 2},
        },
    ),
    (
        "chat.done",
        {
            "conversationId": CONV,
            "messageId": MSG,
            "seq": 2,
            "status": "streaming",
            "finishReason": None,
            "lastChunk": 1,
            "usage": {"outputTokens": 2},
        },
    ),
    ("chat.message", _message(role="robot")),
    ("chat.message", _message(createdAt="2024-05-01 12:00:00")),
    ("chat.message", _message(createdAt="2024-05-01T12:00:00+02:00")),
    ("chat.resumed", {"conversationId": CONV, "replayed": 2, "live": False, "reset": True}),
    ("error", {"code": "NOPE", "class": "SERVER", "message": "m", "retryable": True}),
    ("error", {"code": "RATE_LIMITED", "class": "SERVER", "message": "m", "retryable": True}),
    ("error", {"code": "RATE_LIMITED", "class": "RLIMIT", "message": "m", "retryable": False}),
    ("server.draining", {"reconnectAfterMs": -1}),
    ("pong", {"x": 1}),
    ("session.ready", {"userId": "", "sessionId": "s", "connectionId": "c", "serverTime": NOW}),
]


@pytest.mark.parametrize(("type_", "data"), BAD_SERVER)
def test_server_frames_refused(type_: str, data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        validate_server_frame(encode_server_frame(type_, data, request_id=None, trace_id=TRACE))


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"type":"pong","requestId":null,"data":{}}',
        '{"requestId":null,"type":"pong","traceId":"' + TRACE + '","data":{}}',
        '{"type":"chat.send","requestId":null,"traceId":"' + TRACE + '","data":{}}',
        '{"type":"pong","requestId":5,"traceId":"' + TRACE + '","data":{}}',
        '{"type":"pong","requestId":"' + "r" * 129 + '","traceId":"' + TRACE + '","data":{}}',
        '{"type":"pong","requestId":null,"traceId":"' + TRACE.upper() + '","data":{}}',
        '{"type":"pong","requestId":null,"traceId":"' + "0" * 32 + '","data":{}}',
        '{"type":"pong","requestId":null,"traceId":null,"data":{}}',
    ],
)
def test_server_envelope_refused(text: str) -> None:
    with pytest.raises(ValueError):
        validate_server_frame(text)


def test_error_frame_from_protocol_error_validates() -> None:
    for code in ErrorCode:
        err = ProtocolError(code, retry_after_ms=5 if code is ErrorCode.RATE_LIMITED else None)
        text = encode_server_frame("error", err.to_data(), request_id=None, trace_id=new_trace_id())
        data = validate_server_frame(text).data
        assert isinstance(data, ErrorData)
        assert data.code is code


def test_message_model_is_chat_message_shape() -> None:
    m = Message.model_validate_json(
        encode_server_frame("x", _message(), request_id=None, trace_id=TRACE)[
            len('{"type":"x","requestId":null,"traceId":"' + TRACE + '","data":') : -1
        ],
        strict=True,
    )
    assert m.role is Role.ASSISTANT
    assert m.status is MessageStatus.COMPLETED
    assert set(Message.model_fields) == {
        "id",
        "conversationId",
        "seq",
        "role",
        "content",
        "status",
        "finishReason",
        "createdAt",
    }


# -- helpers ----------------------------------------------------------------------


def test_format_timestamp() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert format_timestamp(moment) == "2024-05-01T12:00:00.123Z"
    plus2 = datetime(2024, 5, 1, 14, 0, 0, 5000, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(plus2) == "2024-05-01T12:00:00.005Z"
    assert format_timestamp(datetime(2024, 5, 1)) == "2024-05-01T00:00:00.000Z"
    # and it is what the models accept
    Message.model_validate(_message(createdAt=format_timestamp(datetime.now(UTC))))


def test_is_trace_id() -> None:
    assert is_trace_id(TRACE)
    assert not is_trace_id(TRACE.upper())
    assert not is_trace_id("0" * 32)
    assert not is_trace_id(TRACE[:-1])
    assert not is_trace_id(TRACE + "0")
    assert not is_trace_id(None)
    assert not is_trace_id(123)
