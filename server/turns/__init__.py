"""Turns: one generation per conversation, owned by the server, not by a connection.

:class:`TurnManager` is the front; ``docs/ARCHITECTURE.md`` walks through how a
turn flows through the modules of this package.
"""

from server.turns.config import TurnConfig
from server.turns.live import Listener, LiveTurn, OutboxLike, Upstream
from server.turns.manager import TurnManager

__all__ = ["Listener", "LiveTurn", "OutboxLike", "TurnConfig", "TurnManager", "Upstream"]
