"""The state machine of one turn (one assistant message being generated).

Like wsproto's `Connection`: the state is an explicit `Enum`, each event is a
method, and an event the state forbids raises `LocalProtocolError` without
changing anything.

    PENDING ──start_streaming()──> STREAMING ──add_delta()*──┐
       │                              │                      │
       │ finish(COMPLETED|CANCELLED|  │ finish(any terminal) │ limit hit:
       │        FAILED|INTERRUPTED)   │                      │ TRUNCATED itself
       v                              v                      v
    COMPLETED  CANCELLED  TRUNCATED  FAILED  INTERRUPTED   (terminal, final)

Decisions:
- `add_delta` needs STREAMING: the caller says `start_streaming()` when the
  first token arrives (that is when retries stop being allowed), so the
  change of state is visible, not implied.
- From PENDING a turn may end COMPLETED (the model answered nothing: empty
  text, `lastChunk` -1), CANCELLED, FAILED or INTERRUPTED, but not TRUNCATED
  (nothing was cut).
- Limits: each delta counts one output token unless the caller gives a
  count. A delta is kept whole while the text stays within
  `max_output_bytes` (UTF-8); the delta that would cross it is cut at the
  last whole character that fits. When either limit is reached (tokens
  `>= max_output_tokens` or bytes `>= max_output_bytes`, or a delta had to be
  cut), the turn finishes itself as TRUNCATED with finishReason `length`;
  `DeltaResult.truncated` tells the caller to stop the upstream, store the
  text and send `chat.done`.
- An empty delta (or the part of one that no longer fits) takes no chunk
  number: `DeltaResult.chunk` is None and nothing is to be sent.
- TRUNCATED always has finishReason `length`; the other statuses default to
  `stop`, `cancelled`, `error`, `interrupted` and accept another reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.frames import MessageStatus

__all__ = [
    "DEFAULT_FINISH_REASONS",
    "TERMINAL_STATES",
    "DeltaResult",
    "LocalProtocolError",
    "Turn",
    "TurnState",
]


class LocalProtocolError(Exception):
    """The caller asked for a transition the turn's state forbids."""


class TurnState(StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    TRUNCATED = "truncated"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


TERMINAL_STATES: frozenset[TurnState] = frozenset(
    {
        TurnState.COMPLETED,
        TurnState.CANCELLED,
        TurnState.TRUNCATED,
        TurnState.FAILED,
        TurnState.INTERRUPTED,
    }
)

DEFAULT_FINISH_REASONS: dict[TurnState, str] = {
    TurnState.COMPLETED: "stop",
    TurnState.CANCELLED: "cancelled",
    TurnState.TRUNCATED: "length",
    TurnState.FAILED: "error",
    TurnState.INTERRUPTED: "interrupted",
}

_FINISH_FROM: dict[TurnState, frozenset[TurnState]] = {
    TurnState.PENDING: frozenset(TERMINAL_STATES - {TurnState.TRUNCATED}),
    TurnState.STREAMING: TERMINAL_STATES,
}


@dataclass(frozen=True, slots=True)
class DeltaResult:
    """What `add_delta` kept.

    `text` is the part of the delta stored and to be sent (all of it unless a
    limit cut it); `chunk` its number, or None when `text` is empty (send
    nothing). `truncated` means a limit was reached: the turn is now
    TRUNCATED.
    """

    chunk: int | None
    text: str
    truncated: bool


def _utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 form fits in `max_bytes`."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


class Turn:
    """One generation: its state, text, chunk numbers and limits."""

    def __init__(self, *, max_output_tokens: int = 4096, max_output_bytes: int = 65536) -> None:
        if max_output_tokens < 1 or max_output_bytes < 1:
            raise ValueError("limits must be positive")
        self.max_output_tokens = max_output_tokens
        self.max_output_bytes = max_output_bytes
        self._state = TurnState.PENDING
        # The text, one entry per chunk (a checkpoint's text is one entry holding all its
        # chunks: ``_first`` is that entry's chunk number, 0 otherwise). Kept per chunk so
        # a resume can replay from any chunk; this is the only copy of a live turn's text.
        self._parts: list[str] = []
        self._first = 0
        self._text_cache: str | None = ""
        self._chunks = 0
        self._tokens = 0
        self._bytes = 0
        self._finish_reason: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        text: str,
        *,
        chunks: int,
        output_tokens: int | None = None,
        max_output_tokens: int = 4096,
        max_output_bytes: int = 65536,
    ) -> Turn:
        """A STREAMING turn carrying on from a checkpoint (another instance's
        text and chunk count); the next delta is chunk number `chunks`.

        `output_tokens` defaults to `chunks` (one token per delta). Raises
        `ValueError` when the checkpoint does not fit the limits.
        """
        turn = cls(max_output_tokens=max_output_tokens, max_output_bytes=max_output_bytes)
        tokens = chunks if output_tokens is None else output_tokens
        size = len(text.encode("utf-8"))
        if chunks < 0 or tokens < 0 or (chunks == 0) != (text == ""):
            raise ValueError("checkpoint: chunk count and text disagree")
        if tokens >= max_output_tokens or size >= max_output_bytes:
            raise ValueError("checkpoint: already at a limit")
        turn._state = TurnState.STREAMING
        turn._parts = [text] if text else []
        turn._first = max(chunks - 1, 0)
        turn._text_cache = text
        turn._chunks = chunks
        turn._tokens = tokens
        turn._bytes = size
        return turn

    # -- read-only view -------------------------------------------------------

    @property
    def state(self) -> TurnState:
        return self._state

    @property
    def is_terminal(self) -> bool:
        return self._state in TERMINAL_STATES

    @property
    def message_status(self) -> MessageStatus:
        """The stored message's status: `streaming` until the turn ends."""
        if self._state in TERMINAL_STATES:
            return MessageStatus(self._state.value)
        return MessageStatus.STREAMING

    @property
    def text(self) -> str:
        if self._text_cache is None:
            self._text_cache = "".join(self._parts)
        return self._text_cache

    def entries(self) -> tuple[tuple[int, str], ...]:
        """The text so far as `(chunk, text)` pairs, `chunk` the number of the last delta an
        entry holds (`protocol.resume.InFlight.chunks`)."""
        first = self._first
        return tuple((first + i, part) for i, part in enumerate(self._parts))

    def text_since(self, chunk: int) -> str:
        """The text of chunks `chunk` and later ('' when there are none). Raises
        `ValueError` for a chunk inside a checkpoint's merged entry (it cannot be cut)."""
        if chunk <= 0:
            return self.text
        i = chunk - self._first
        if i <= 0:
            raise ValueError(f"chunk {chunk} lies inside a merged checkpoint entry")
        return "".join(self._parts[i:])

    @property
    def chunks(self) -> int:
        """How many chunks were numbered (the next one is this number)."""
        return self._chunks

    @property
    def last_chunk(self) -> int:
        """The number of the last chunk, -1 when there is none (`chat.done`)."""
        return self._chunks - 1

    @property
    def output_tokens(self) -> int:
        return self._tokens

    @property
    def output_bytes(self) -> int:
        return self._bytes

    @property
    def finish_reason(self) -> str | None:
        """None until the turn ends."""
        return self._finish_reason

    # -- events ---------------------------------------------------------------

    def start_streaming(self) -> None:
        """The first token arrived: PENDING -> STREAMING."""
        if self._state is not TurnState.PENDING:
            raise LocalProtocolError(f"start_streaming in state {self._state.name}")
        self._state = TurnState.STREAMING

    def add_delta(self, text: str, tokens: int | None = None) -> DeltaResult:
        """Store one upstream delta (STREAMING only) and number it.

        `tokens` is the delta's output token count (default 1; 0 is allowed).
        """
        if self._state is not TurnState.STREAMING:
            raise LocalProtocolError(f"add_delta in state {self._state.name}")
        count = 1 if tokens is None else tokens
        if count < 0:
            raise ValueError("tokens must be >= 0")
        if not text:
            return DeltaResult(None, "", False)
        size = len(text.encode("utf-8"))
        room = self.max_output_bytes - self._bytes
        cut = size > room
        if cut:
            text = _utf8_prefix(text, room)
            size = len(text.encode("utf-8"))
        self._tokens += count
        chunk: int | None = None
        if text:
            chunk = self._chunks
            self._chunks += 1
            self._parts.append(text)
            self._text_cache = None
            self._bytes += size
        truncated = (
            cut or self._tokens >= self.max_output_tokens or self._bytes >= self.max_output_bytes
        )
        if truncated:
            self._end(TurnState.TRUNCATED, DEFAULT_FINISH_REASONS[TurnState.TRUNCATED])
        return DeltaResult(chunk, text, truncated)

    def finish(self, status: TurnState, finish_reason: str | None = None) -> None:
        """End the turn in terminal `status`.

        `finish_reason` defaults per status (`DEFAULT_FINISH_REASONS`);
        TRUNCATED accepts only `length`.
        """
        status = TurnState(status)
        allowed = _FINISH_FROM.get(self._state, frozenset())
        if status not in allowed:
            raise LocalProtocolError(f"finish({status.name}) in state {self._state.name}")
        if finish_reason is None:
            finish_reason = DEFAULT_FINISH_REASONS[status]
        elif status is TurnState.TRUNCATED and finish_reason != "length":
            raise ValueError("a truncated turn has finishReason 'length'")
        elif not finish_reason or len(finish_reason) > 64:
            raise ValueError("finish_reason must be 1 to 64 characters")
        self._end(status, finish_reason)

    def _end(self, status: TurnState, finish_reason: str) -> None:
        self._state = status
        self._finish_reason = finish_reason

    def __repr__(self) -> str:
        return (
            f"<Turn {self._state.name} chunks={self._chunks} tokens={self._tokens} "
            f"bytes={self._bytes}>"
        )
