"""What the upstream sees: the optional system prompt, then the conversation's history."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from protocol.turn import Turn
from server.llm.base import ChatMessage
from server.turns import LiveTurn, TurnConfig
from server.turns.generation import Generation
from server.turns.relay import Relay
from store.records import MessageRecord

NOW = dt.datetime(2026, 1, 1)


def record(seq: int, role: str) -> MessageRecord:
    return MessageRecord(
        id=f"m{seq}",
        conversation_id="c",
        user_id="u",
        seq=seq,
        role=role,
        content="",
        status="streaming",
        finish_reason=None,
        client_message_id=None,
        parent_id=None,
        prompt_tokens=None,
        completion_tokens=None,
        chunk_count=0,
        created_at=NOW,
        updated_at=NOW,
        deleted_at=None,
    )


def manager(system_prompt: str) -> Generation:
    svc: Any = SimpleNamespace(instance_id="test")
    upstream: Any = SimpleNamespace()
    cfg = TurnConfig(system_prompt=system_prompt)
    return Generation(svc, upstream, cfg, {}, Relay(svc, cfg, {}, enabled=False))


def live(history: list[tuple[str, str]]) -> LiveTurn:
    return LiveTurn(
        conversation_id="c",
        user_id="u",
        client_message_id="k",
        user_message=record(3, "user"),
        assistant=record(4, "assistant"),
        history=history,
        received_at=0.0,
        turn=Turn(),
    )


def test_history_in_order_with_system_prompt_first() -> None:
    turn = live([("user", "hi"), ("assistant", "hello"), ("user", "and now?")])
    assert manager("Be brief.").upstream_messages(turn) == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("user", "and now?"),
    ]
    assert manager("").upstream_messages(turn)[0] == ChatMessage("user", "hi")
