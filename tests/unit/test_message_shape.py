import datetime as dt

from protocol.frames import ChatMessage
from protocol.outgoing import message_data
from server.api.schemas import conversation_json
from store.records import ConversationRecord, MessageRecord

WHEN = dt.datetime(2026, 11, 26, 6, 30, 5, 123456)


def test_message_data_is_the_wire_message() -> None:
    m = MessageRecord(
        id="0b7e4b1a-0a8e-4c6a-9a3e-2f1d6c5b4a39",
        conversation_id="6f1c8f7e-4a40-4d3e-9d65-1b8f1e0c2a11",
        user_id="u",
        seq=2,
        role="assistant",
        content="hi",
        status="completed",
        finish_reason="stop",
        client_message_id=None,
        parent_id=None,
        prompt_tokens=None,
        completion_tokens=1,
        chunk_count=1,
        created_at=WHEN,
        updated_at=WHEN,
        deleted_at=None,
    )
    data = message_data(m)
    ChatMessage.model_validate(data, strict=False)  # the same shape the WS frame must have
    assert data["createdAt"] == "2026-11-26T06:30:05.123Z"
    c = ConversationRecord(
        id="c",
        user_id="u",
        title="t",
        last_seq=0,
        created_at=WHEN,
        updated_at=WHEN,
        deleted_at=None,
    )
    assert conversation_json(c)["updatedAt"] == "2026-11-26T06:30:05.123Z"
