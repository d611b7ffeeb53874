"""Parley protocol: what is said on the wire, and the rules of a turn.

Pure (sans-I/O): no trio, no sockets, no database, nothing from `server` or
`store`. One idea per module:

- `protocol.errors`: error codes and classes, `ProtocolError`.
- `protocol.close_codes`: close codes, reconnect advice, reasons.
- `protocol.frames`: frame types and the pydantic model of each frame's data.
- `protocol.codec`: parse client frames, encode server frames.
- `protocol.turn`: the state machine of one turn.
- `protocol.coalesce`: the per-connection outbound queue that merges deltas.
- `protocol.resume`: what a `chat.resume` replays, or whether it resets.
"""

__all__: list[str] = []
