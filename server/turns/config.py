"""The numbers a turn lives by, taken once from the settings (contract section 4)."""

from __future__ import annotations

from dataclasses import dataclass

from server.settings import Settings

__all__ = ["TurnConfig"]


@dataclass(frozen=True, slots=True)
class TurnConfig:
    max_output_tokens: int = 4096
    max_output_bytes: int = 64 * 1024
    max_turns_per_user: int = 3
    idempotency_ttl: float = 24 * 3600
    duplicate_window: float = 10.0
    replay_max_messages: int = 200
    replay_max_bytes: int = 1 << 20
    checkpoint_seconds: float = 0.5
    system_prompt: str = ""
    # Across instances (server/turns/relay.py): the owner's lease on a live turn, how often
    # it is renewed, how often every instance sweeps for turns whose owner is gone, how
    # often stream buffers are flushed, and how long a finished turn's buffer lingers.
    lease_ttl: float = 10.0
    lease_renew: float = 2.0
    sweep_seconds: float = 3.0
    relay_flush_seconds: float = 0.01
    stream_linger: float = 120.0
    # Not contract numbers: how long a final write may hold up chat.done (or shutdown),
    # and how many turn starts share one transaction when they arrive together.
    finish_deadline: float = 45.0
    begin_batch_max: int = 64

    @classmethod
    def from_settings(cls, s: Settings) -> TurnConfig:
        return cls(
            max_output_tokens=s.max_output_tokens,
            max_output_bytes=s.max_output_bytes,
            max_turns_per_user=s.max_turns_per_user,
            idempotency_ttl=s.idempotency_ttl_seconds,
            duplicate_window=s.duplicate_window_seconds,
            replay_max_messages=s.replay_max_messages,
            replay_max_bytes=s.replay_max_bytes,
            checkpoint_seconds=s.checkpoint_seconds,
            system_prompt=s.llm_system_prompt,
            lease_ttl=s.turn_lease_seconds,
            lease_renew=s.turn_lease_seconds / 5,
            sweep_seconds=s.turn_sweep_seconds,
        )
