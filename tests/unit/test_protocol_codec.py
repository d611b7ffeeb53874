"""parse_client_frame, encode_server_frame and friends."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.codec as codec
from protocol import outgoing
from protocol.close_codes import CloseCode
from protocol.codec import (
    MAX_CONTENT_CHARS,
    MAX_FRAME_BYTES,
    ClientFrame,
    encode_client_frame,
    encode_server_frame,
    new_trace_id,
    parse_client_frame,
    validate_server_frame,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.frames import (
    AuthRefresh,
    ChatCancel,
    ChatResume,
    ChatSend,
    ClientType,
    Ping,
    ServerType,
    is_trace_id,
)
from protocol.outgoing import ReplyTo

CONV = "0b7e6b3c-7d0a-4a9e-9a57-5b8c5f1e2d3c"
MSG = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def frame(type_: str = "chat.send", data: Any = ..., **env: Any) -> str:
    raw: dict[str, Any] = {"type": type_}
    raw.update(env)
    if data is ...:
        data = {"conversationId": CONV, "messageId": MSG, "content": "hello"}
    if data is not None:
        raw["data"] = data
    return json.dumps(raw, ensure_ascii=False)


def fails(text: str | bytes, code: ErrorCode) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    assert info.value.code is code, info.value
    return info.value


# -- happy paths -------------------------------------------------------------------


def test_constants() -> None:
    assert MAX_FRAME_BYTES == 65536
    assert MAX_CONTENT_CHARS == 8000


def test_parse_chat_send() -> None:
    f = parse_client_frame(frame(requestId="c-17", traceId=TRACE))
    assert f == ClientFrame(
        type=ClientType.CHAT_SEND,
        request_id="c-17",
        trace_id=TRACE,
        data=ChatSend(conversationId=CONV, messageId=MSG, content="hello"),
    )
    assert isinstance(f.data, ChatSend)


def test_parse_without_ids() -> None:
    f = parse_client_frame(frame())
    assert f.request_id is None
    assert f.trace_id is None
    f = parse_client_frame(frame(requestId=None, traceId=None))
    assert f.request_id is None and f.trace_id is None


def test_parse_every_client_type() -> None:
    assert isinstance(
        parse_client_frame(frame("chat.cancel", {"conversationId": CONV, "messageId": MSG})).data,
        ChatCancel,
    )
    r = parse_client_frame(
        frame("chat.resume", {"conversationId": CONV, "lastMessageSeq": 4, "lastChunk": 12})
    ).data
    assert r == ChatResume(conversationId=CONV, lastMessageSeq=4, lastChunk=12)
    a = parse_client_frame(frame("auth.refresh", {"accessToken": "a.b.c"})).data
    assert a == AuthRefresh(accessToken="a.b.c")


@pytest.mark.parametrize(
    "text", ['{"type":"ping"}', '{"type":"ping","data":null}', frame("ping", {})]
)
def test_ping_data_absent_null_or_empty(text: str) -> None:
    f = parse_client_frame(text)
    assert f.type is ClientType.PING
    assert f.data == Ping()


def test_parse_bytes() -> None:
    f = parse_client_frame(frame(requestId="é").encode())
    assert f.request_id == "é"


def test_uuid_normalised_to_lower_case() -> None:
    f = parse_client_frame(
        frame(data={"conversationId": CONV.upper(), "messageId": MSG.upper(), "content": "x"})
    )
    assert isinstance(f.data, ChatSend)
    assert f.data.conversationId == CONV and f.data.messageId == MSG


def test_content_limits() -> None:
    ok = {"conversationId": CONV, "messageId": MSG, "content": "😀" * 8000}
    f = parse_client_frame(frame(data=ok))
    assert isinstance(f.data, ChatSend) and len(f.data.content) == 8000
    err = fails(
        frame(data=dict(ok, content="x" * 8001), requestId="r9"), ErrorCode.PAYLOAD_TOO_LARGE
    )
    assert err.message.startswith("data.content:")
    assert err.request_id == "r9"
    assert err.close_code is None  # an error frame, not a close


def test_content_too_large_wins_over_other_faults() -> None:
    data = {"conversationId": "nope", "messageId": MSG, "content": "x" * 8001, "extra": 1}
    fails(frame(data=data), ErrorCode.PAYLOAD_TOO_LARGE)


# -- size -----------------------------------------------------------------------


def _pad_to(text: str, size: int) -> str:
    return text + " " * (size - len(text.encode()))


def test_frame_size_bound_ascii() -> None:
    base = '{"type":"ping","data":{}}'
    assert parse_client_frame(_pad_to(base, MAX_FRAME_BYTES)).type is ClientType.PING
    err = fails(_pad_to(base, MAX_FRAME_BYTES + 1), ErrorCode.PAYLOAD_TOO_LARGE)
    assert err.close_code is CloseCode.TOO_BIG
    assert err.request_id is None
    fails(_pad_to(base, MAX_FRAME_BYTES + 1).encode(), ErrorCode.PAYLOAD_TOO_LARGE)
    assert parse_client_frame(_pad_to(base, MAX_FRAME_BYTES).encode()).type is ClientType.PING


def test_frame_size_bound_counts_utf8_bytes_not_characters() -> None:
    base = '{"type":"ping","requestId":"é","data":{}}'
    exact = _pad_to(base, MAX_FRAME_BYTES)
    assert len(exact) == MAX_FRAME_BYTES - 1  # one character is two bytes
    assert parse_client_frame(exact).request_id == "é"
    fails(exact + " ", ErrorCode.PAYLOAD_TOO_LARGE)
    # fewer characters than the limit, but more bytes
    big = json.dumps({"type": "ping", "requestId": "é" * 40000}, ensure_ascii=False)
    assert len(big) < MAX_FRAME_BYTES < len(big.encode())
    fails(big, ErrorCode.PAYLOAD_TOO_LARGE)
    fails("x" * (MAX_FRAME_BYTES + 1), ErrorCode.PAYLOAD_TOO_LARGE)


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "nope", "{", '{"type":"ping",}', b"\xff\xfe", '"\\ud800"', "NaN", '{"type": "ping"} x'],
)
def test_not_json(text: str | bytes) -> None:
    err = fails(text, ErrorCode.VALIDATION_FAILED)
    assert err.message == "frame is not valid JSON"
    assert err.request_id is None


def test_str_with_lone_surrogate() -> None:
    fails('{"type":"ping","requestId":"\ud800"}', ErrorCode.VALIDATION_FAILED)


@pytest.mark.parametrize("text", ["[]", "1", '"ping"', "null", "true", '[{"type":"ping"}]'])
def test_not_an_object(text: str) -> None:
    err = fails(text, ErrorCode.VALIDATION_FAILED)
    assert err.message == "frame must be a JSON object"


def test_type_missing_or_not_a_string() -> None:
    err = fails('{"requestId":"r1","data":{}}', ErrorCode.VALIDATION_FAILED)
    assert err.message == "type: field required"
    assert err.request_id == "r1"
    for bad in ("null", "1", "[]", "{}", "true"):
        err = fails('{"type":' + bad + ',"requestId":"r2"}', ErrorCode.VALIDATION_FAILED)
        assert err.message == "type: must be a string"
        assert err.request_id == "r2"


@pytest.mark.parametrize("type_", [t.value for t in ServerType] + ["", "CHAT.SEND", "chat.send "])
def test_unknown_types(type_: str) -> None:
    err = fails(frame(type_, {}, requestId="r3", traceId=TRACE), ErrorCode.UNKNOWN_TYPE)
    assert err.request_id == "r3"
    assert err.trace_id == TRACE
    assert repr(type_) in err.message


def test_unknown_type_message_is_clipped() -> None:
    err = fails(frame("z" * 5000, {}), ErrorCode.UNKNOWN_TYPE)
    assert len(err.message) < 120


def test_extra_envelope_field() -> None:
    err = fails(frame(requestId="r4", extra=1), ErrorCode.VALIDATION_FAILED)
    assert err.message == "'extra': unexpected field"
    assert err.request_id == "r4"


@pytest.mark.parametrize("rid", ["", "r" * 129, 5, True, [], {}])
def test_bad_request_id(rid: Any) -> None:
    err = fails(frame(requestId=rid, traceId=TRACE), ErrorCode.VALIDATION_FAILED)
    assert err.message.startswith("requestId:")
    assert err.request_id is None  # cannot echo what is not a valid id
    assert err.trace_id == TRACE


def test_request_id_edges() -> None:
    assert parse_client_frame(frame(requestId="r" * 128)).request_id == "r" * 128
    assert parse_client_frame(frame(requestId="x")).request_id == "x"


@pytest.mark.parametrize("tid", [TRACE.upper(), "0" * 32, TRACE[:-1], TRACE + "a", 7, "xyz"])
def test_bad_trace_id(tid: Any) -> None:
    err = fails(frame(requestId="r5", traceId=tid), ErrorCode.VALIDATION_FAILED)
    assert err.message.startswith("traceId:")
    assert err.request_id == "r5"
    assert err.trace_id is None


@pytest.mark.parametrize(
    ("type_", "data", "message"),
    [
        ("chat.send", None, "data: field required"),
        ("chat.send", [], "data: must be an object"),
        ("chat.send", "x", "data: must be an object"),
        ("ping", [], "data: must be an object"),
        ("ping", 0, "data: must be an object"),
        ("ping", {"x": 1}, "data.x: Extra inputs are not permitted"),
        (
            "chat.send",
            {"conversationId": CONV, "messageId": MSG, "content": ""},
            "data.content: String should have at least 1 character",
        ),
        (
            "chat.send",
            {"conversationId": CONV, "messageId": MSG, "content": 5},
            "data.content: Input should be a valid string",
        ),
        ("chat.send", {"conversationId": CONV, "messageId": MSG}, "data.content: Field required"),
        (
            "chat.send",
            {"conversationId": "x", "messageId": MSG, "content": "hi"},
            "data.conversationId: must be a UUID string (8-4-4-4-12 hexadecimal digits)",
        ),
        (
            "chat.send",
            {"conversationId": CONV, "messageId": MSG, "content": "hi", "x": 1},
            "data.x: Extra inputs are not permitted",
        ),
        ("chat.send", {}, "data.conversationId: Field required (and 2 more)"),
        (
            "chat.resume",
            {"conversationId": CONV, "lastMessageSeq": "3"},
            "data.lastMessageSeq: Input should be a valid integer",
        ),
        (
            "chat.resume",
            {"conversationId": CONV, "lastMessageSeq": 1.0},
            "data.lastMessageSeq: Input should be a valid integer",
        ),
        (
            "chat.resume",
            {"conversationId": CONV, "lastMessageSeq": -1},
            "data.lastMessageSeq: Input should be greater than or equal to 0",
        ),
        (
            "chat.resume",
            {"conversationId": CONV, "lastMessageSeq": 1, "lastChunk": -2},
            "data.lastChunk: Input should be greater than or equal to -1",
        ),
        (
            "chat.resume",
            {"conversationId": CONV, "lastMessageSeq": 10**30},
            "data.lastMessageSeq: Input should be a valid integer",
        ),
        ("auth.refresh", {"accessToken": ""}, "data.accessToken: String should have at least 1"),
        ("auth.refresh", {"accessToken": None}, "data.accessToken: Input should be a valid string"),
        ("chat.cancel", {"conversationId": CONV}, "data.messageId: Field required"),
    ],
)
def test_schema_faults_name_the_field(type_: str, data: Any, message: str) -> None:
    err = fails(frame(type_, data, requestId="r6"), ErrorCode.VALIDATION_FAILED)
    assert err.message.startswith(message), err.message
    assert err.request_id == "r6"


def test_schema_fault_does_not_echo_input() -> None:
    secret = "s3cret-" + "x" * 50
    err = fails(frame("chat.send", {"conversationId": secret}), ErrorCode.VALIDATION_FAILED)
    assert secret not in err.message


def test_long_extra_key_is_clipped_in_message() -> None:
    err = fails(frame("ping", {"k" * 1000: 1}), ErrorCode.VALIDATION_FAILED)
    assert len(err.message) < 200


# -- encoding ----------------------------------------------------------------------


def test_encode_server_frame_shape() -> None:
    text = encode_server_frame("pong", {}, request_id=None, trace_id=TRACE)
    assert text == '{"type":"pong","requestId":null,"traceId":"' + TRACE + '","data":{}}'
    assert isinstance(text, str)
    text = encode_server_frame(
        ServerType.CHAT_STREAM,
        {"conversationId": CONV, "messageId": MSG, "seq": 2, "chunk": 0, "delta": 'a"\n😀'},
        request_id="c-17",
        trace_id=TRACE,
    )
    assert list(orjson.loads(text)) == ["type", "requestId", "traceId", "data"]
    assert orjson.loads(text)["data"]["delta"] == 'a"\n😀'
    assert orjson.loads(text)["type"] == "chat.stream"
    validate_server_frame(text)


def encode_error(err: ProtocolError, *, trace_id: str) -> str:
    return outgoing.error(err, ReplyTo(None, trace_id)).text


def test_encode_error() -> None:
    err = ProtocolError(ErrorCode.NOT_FOUND, request_id="r7")
    out = orjson.loads(encode_error(err, trace_id=TRACE))
    assert out["type"] == "error"
    assert out["requestId"] == "r7"
    assert out["traceId"] == TRACE
    assert out["data"]["code"] == "NOT_FOUND"
    own = "1" * 32
    err = ProtocolError(ErrorCode.NOT_FOUND, trace_id=own)
    assert orjson.loads(encode_error(err, trace_id=TRACE))["traceId"] == own


def test_parse_errors_encode_to_valid_error_frames() -> None:
    for text in ["x", "[]", frame("nope"), frame(requestId=5), frame(data={"content": "x" * 9000})]:
        with pytest.raises(ProtocolError) as info:
            parse_client_frame(text)
        validate_server_frame(encode_error(info.value, trace_id=new_trace_id()))


def test_encode_client_frame_omits_nulls() -> None:
    f = ClientFrame(
        ClientType.CHAT_RESUME, None, None, ChatResume(conversationId=CONV, lastMessageSeq=3)
    )
    assert orjson.loads(encode_client_frame(f)) == {
        "type": "chat.resume",
        "data": {"conversationId": CONV, "lastMessageSeq": 3},
    }


def test_new_trace_id() -> None:
    ids = {new_trace_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(is_trace_id(t) for t in ids)


def test_new_trace_id_never_all_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["0" * 32, "0" * 32, "ab" * 16])
    monkeypatch.setattr(codec.secrets, "token_hex", lambda n: next(answers))
    assert new_trace_id() == "ab" * 16


# -- properties --------------------------------------------------------------------

_text = st.characters(exclude_categories=["Cs"])
_uuids = st.uuids().map(str)
_trace_ids = st.binary(min_size=16, max_size=16).map(bytes.hex).filter(lambda t: t != "0" * 32)
_request_ids = st.none() | st.text(_text, min_size=1, max_size=128)
_datas = st.one_of(
    st.builds(
        ChatSend,
        conversationId=_uuids,
        messageId=_uuids,
        content=st.text(_text, min_size=1, max_size=MAX_CONTENT_CHARS),
    ),
    st.builds(ChatCancel, conversationId=_uuids, messageId=_uuids),
    st.builds(
        ChatResume,
        conversationId=_uuids,
        lastMessageSeq=st.integers(0, 2**53 - 1),
        lastChunk=st.none() | st.integers(-1, 2**53 - 1),
    ),
    st.builds(AuthRefresh, accessToken=st.text(_text, min_size=1, max_size=8192)),
    st.just(Ping()),
)
_types = {
    ChatSend: ClientType.CHAT_SEND,
    ChatCancel: ClientType.CHAT_CANCEL,
    ChatResume: ClientType.CHAT_RESUME,
    AuthRefresh: ClientType.AUTH_REFRESH,
    Ping: ClientType.PING,
}


@st.composite
def client_frames(draw: st.DrawFn) -> ClientFrame:
    data = draw(_datas)
    return ClientFrame(
        type=_types[type(data)],
        request_id=draw(_request_ids),
        trace_id=draw(st.none() | _trace_ids),
        data=data,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(client_frames())
def test_accepted_frames_round_trip(f: ClientFrame) -> None:
    text = encode_client_frame(f)
    assert len(text.encode()) <= MAX_FRAME_BYTES
    assert parse_client_frame(text) == f
    assert parse_client_frame(text.encode()) == f


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(_text),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_text), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(["type", "requestId", "traceId", "data", "x"]) | st.text(_text, max_size=5)
_values = (
    _json
    | st.sampled_from([t.value for t in ClientType] + [t.value for t in ServerType])
    | _uuids
    | _trace_ids
    | st.dictionaries(
        st.sampled_from(
            [
                "conversationId",
                "messageId",
                "content",
                "lastMessageSeq",
                "lastChunk",
                "accessToken",
            ]
        ),
        _json | _uuids | st.integers(-3, 3),
    )
)


def _must_only_raise_protocol_error(text: str | bytes) -> None:
    try:
        f = parse_client_frame(text)
    except ProtocolError as err:
        assert err.code in {
            ErrorCode.VALIDATION_FAILED,
            ErrorCode.UNKNOWN_TYPE,
            ErrorCode.PAYLOAD_TOO_LARGE,
        }
        assert err.request_id is None or isinstance(err.request_id, str)
        assert err.message
    else:
        assert isinstance(f, ClientFrame)


@settings(max_examples=500)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_junk_objects_only_raise_protocol_error(obj: dict[str, Any]) -> None:
    _must_only_raise_protocol_error(json.dumps(obj, ensure_ascii=False))


@settings(max_examples=300)
@given(st.text() | st.binary())
def test_junk_text_only_raises_protocol_error(text: str | bytes) -> None:
    _must_only_raise_protocol_error(text)


@settings(max_examples=300)
@given(client_frames(), st.data())
def test_mutated_frames_only_raise_protocol_error(f: ClientFrame, data: st.DataObject) -> None:
    raw = orjson.loads(encode_client_frame(f))
    key = data.draw(st.sampled_from(["type", "requestId", "traceId", "data"]))
    if data.draw(st.booleans()):
        raw.pop(key, None)
    else:
        raw[key] = data.draw(_values)
    if isinstance(raw.get("data"), dict) and raw["data"] and data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(raw["data"])))
        raw["data"][field] = data.draw(_values)
    _must_only_raise_protocol_error(json.dumps(raw, ensure_ascii=False))


def test_limits_come_from_the_caller() -> None:
    ok = {"conversationId": CONV, "messageId": MSG, "content": "x" * 9000}
    f = parse_client_frame(frame(data=ok), max_content_chars=9000)
    assert isinstance(f.data, ChatSend) and len(f.data.content) == 9000
    fails(frame(data=ok), ErrorCode.PAYLOAD_TOO_LARGE)  # the contract's 8,000 by default
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frame(data=dict(ok, content="x" * 101)), max_content_chars=100)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE and "100" in info.value.message
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(frame(data=dict(ok, content="x" * 3000)), max_frame_bytes=2048)
    assert info.value.close_code is not None and info.value.close_code.value == 1009
