"""Graceful drain (contract section 5): what SIGTERM does before the process exits.

1. ``/readyz`` turns 503 and new WebSocket upgrades get HTTP 503 (``draining`` is set);
   a ``chat.send`` on an open socket answers ``SERVER_DRAINING``.
2. Every connected client gets ``server.draining {reconnectAfterMs}``.
3. Turns in flight may finish for up to ``grace`` seconds (20 by default).
4. The rest are cut: each ends ``interrupted`` with its text stored, and its
   ``chat.done`` is queued before the close.
5. Every socket closes with 1012 once what is queued for it is written.

The whole sequence stays within 30 s with the defaults: 20 s of grace, at most 3 s
for the cut turns to be stored, 2 s for the closes, then Hypercorn's 3 s.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from protocol.close_codes import CloseCode
from protocol.outgoing import server_draining
from server.logging import get_logger
from server.services import Services
from server.turns import TurnManager
from server.ws.hub import Hub

__all__ = ["drain"]

log = get_logger("parley.drain")


async def _until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (drain runs once: polling
    is simpler than wiring an event through every turn and socket)."""
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        if predicate():
            return True
        await trio.sleep(step)
    return predicate()


async def drain(
    svc: Services, hub: Hub, turns: TurnManager, *, grace: float, reconnect_after_ms: int
) -> None:
    svc.draining.set()
    conns = hub.all()
    for conn in conns:
        # Jittered, so the clients of one instance do not all reconnect in the same instant
        conn.outbox.push_frame(server_draining(int(reconnect_after_ms * random.uniform(0.5, 1.5))))
    log.info("draining", connections=len(conns), turns=len(turns.live), grace=grace)
    finished = await _until(lambda: not turns.live, grace)
    if not finished:
        cut = turns.interrupt_all()
        log.info("drain_interrupting", turns=cut)
        await _until(lambda: not turns.live, 3.0)
    for conn in hub.all():
        conn.close(int(CloseCode.RESTART), "SERVER_DRAINING")
    await _until(lambda: hub.count() == 0, 2.0)
    log.info("drained", remaining_connections=hub.count(), remaining_turns=len(turns.live))
