"""The resume planner: given what the client holds and what the server has,
what to replay, or whether to reset.

Inputs:
- from `chat.resume`: `last_message_seq` (the highest seq the client holds
  whole) and `last_chunk` (the last chunk it holds of the message after that
  one, if that message was in flight; None and -1 both mean none);
- from the server: `server_last_seq` (the conversation's highest seq),
  `stored`, the stored messages with a seq above `last_message_seq` (seq and
  size each), and `in_flight`, the message still streaming, if any, with the
  `chat.stream` frames delivered so far.

Output: a `ReplayPlan` (send `chat.message` for `messages`, in order, then
the in-flight message's text from chunk `stream_from_chunk` on as one
`chat.stream` (`stream` is that part as it was planned; deltas that arrived
since may be sent with it), then `chat.resumed`, then live frames), or a
`Reset` (send `chat.resumed` with `reset: true`;
the client reloads history over REST).

Rules and edge cases:
- Client ahead of the server (`last_message_seq > server_last_seq`): reset.
- The in-flight message's stored row (same seq, status streaming) in
  `stored` is skipped: it is replayed from its chunks. A stored message
  after the in-flight one cannot exist (one turn per conversation): the
  input is refused with `ValueError`.
- Client already claims the in-flight message whole
  (`last_message_seq >= in_flight.seq`: the in-flight record is stale, the
  turn ended in between): reset.
- `last_chunk` applies only when the in-flight message comes right after
  `last_message_seq`; otherwise the client holds none of it and gets all of
  its chunks. Without an in-flight message, a message the client held in
  part has finished since: it is sent whole as `chat.message` (the client
  replaces its partial copy), `last_chunk` is ignored.
- Client claims chunks the server never delivered (`last_chunk` beyond the
  last delivered chunk): reset.
- The in-flight chunks are `(chunk, delta)` pairs exactly as in `chat.stream`:
  `chunk` is the number of the last delta the entry holds, so merged entries
  (even one entry with the whole text so far) are fine. If the client's
  position falls inside a merged entry it cannot be cut: reset.
- Window: at most `max_messages` (200) messages, counting the in-flight one
  when any of it is replayed, and `max_bytes` (1 MiB) of content (stored
  sizes plus replayed delta bytes, UTF-8). Past either: reset.
- `replayed` (for `chat.resumed`) counts replayed frames: one per stored
  message and one per in-flight entry sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "REPLAY_MAX_BYTES",
    "REPLAY_MAX_MESSAGES",
    "InFlight",
    "ReplayPlan",
    "Reset",
    "ResetReason",
    "StoredRef",
    "plan_resume",
]

REPLAY_MAX_MESSAGES = 200
REPLAY_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredRef:
    """A stored message: its seq and its content's size in UTF-8 bytes."""

    seq: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class InFlight:
    """The message still streaming: its seq and the `(chunk, delta)` entries
    delivered so far, in order (chunk = number of the last delta held)."""

    seq: int
    chunks: tuple[tuple[int, str], ...] = ()

    @classmethod
    def from_text(cls, seq: int, text: str, chunk_count: int) -> InFlight:
        """The whole text so far as one merged entry (all the server may have
        after a checkpoint); can only be replayed to a client holding none of it."""
        if chunk_count == 0:
            return cls(seq, ())
        return cls(seq, ((chunk_count - 1, text),))

    @property
    def last_chunk(self) -> int:
        return self.chunks[-1][0] if self.chunks else -1


class ResetReason(StrEnum):
    CLIENT_AHEAD = "client_ahead"
    STALE_IN_FLIGHT = "stale_in_flight"
    CHUNKS_UNAVAILABLE = "chunks_unavailable"
    TOO_MANY_MESSAGES = "too_many_messages"
    TOO_MANY_BYTES = "too_many_bytes"


@dataclass(frozen=True, slots=True)
class Reset:
    reason: ResetReason
    live: bool
    """A turn is streaming: live frames follow the `chat.resumed`."""

    @property
    def replayed(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    messages: tuple[int, ...]
    """Seqs to send as `chat.message`, ascending."""
    in_flight_seq: int | None
    stream: tuple[tuple[int, str], ...]
    """`(chunk, delta)` to send as `chat.stream` for `in_flight_seq`, in order."""
    stream_from_chunk: int
    """The first chunk of the in-flight message the client lacks (0 when it holds none,
    or nothing is in flight): replay from here, then go on live."""
    replay_bytes: int

    @property
    def live(self) -> bool:
        return self.in_flight_seq is not None

    @property
    def replayed(self) -> int:
        return len(self.messages) + len(self.stream)


def plan_resume(
    *,
    last_message_seq: int,
    last_chunk: int | None,
    server_last_seq: int,
    stored: Sequence[StoredRef],
    in_flight: InFlight | None = None,
    max_messages: int = REPLAY_MAX_MESSAGES,
    max_bytes: int = REPLAY_MAX_BYTES,
) -> ReplayPlan | Reset:
    """Decide what a `chat.resume` replays (see the module docstring)."""
    live = in_flight is not None
    if last_message_seq > server_last_seq:
        return Reset(ResetReason.CLIENT_AHEAD, live)
    if in_flight is not None and last_message_seq >= in_flight.seq:
        return Reset(ResetReason.STALE_IN_FLIGHT, live)

    seqs: list[int] = []
    size = 0
    for ref in sorted(stored, key=lambda r: r.seq):
        if ref.seq <= last_message_seq:
            continue
        if in_flight is not None and ref.seq >= in_flight.seq:
            if ref.seq == in_flight.seq:
                continue
            raise ValueError(f"stored message {ref.seq} after in-flight {in_flight.seq}")
        seqs.append(ref.seq)
        size += ref.size_bytes

    stream: tuple[tuple[int, str], ...] = ()
    stream_from = 0
    if in_flight is not None:
        held = -1
        if last_chunk is not None and in_flight.seq == last_message_seq + 1:
            held = last_chunk
        if held > in_flight.last_chunk:
            return Reset(ResetReason.CHUNKS_UNAVAILABLE, live)
        start = 0
        for i, (chunk, _) in enumerate(in_flight.chunks):
            if chunk > held:
                first_in_entry = in_flight.chunks[i - 1][0] + 1 if i else 0
                if first_in_entry <= held:
                    return Reset(ResetReason.CHUNKS_UNAVAILABLE, live)
                start = i
                break
        else:
            start = len(in_flight.chunks)
        stream = in_flight.chunks[start:]
        stream_from = held + 1
        size += sum(len(delta.encode("utf-8")) for _, delta in stream)

    count = len(seqs) + (1 if stream else 0)
    if count > max_messages:
        return Reset(ResetReason.TOO_MANY_MESSAGES, live)
    if size > max_bytes:
        return Reset(ResetReason.TOO_MANY_BYTES, live)
    return ReplayPlan(
        messages=tuple(seqs),
        in_flight_seq=in_flight.seq if in_flight is not None else None,
        stream=stream,
        stream_from_chunk=stream_from,
        replay_bytes=size,
    )
