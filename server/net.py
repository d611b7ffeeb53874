"""The client's address, as REST and the WebSocket both take it."""

from __future__ import annotations

__all__ = ["forwarded_ip"]


def forwarded_ip(header: str, remote_addr: str | None, *, trust_proxy: bool) -> str | None:
    """The client address. Behind a trusted proxy, the rightmost ``X-Forwarded-For`` entry:
    the one our proxy appended (entries to its left are whatever the client sent)."""
    if trust_proxy and header:
        last = header.rsplit(",", 1)[-1].strip()
        if last:
            return last[:45]
    return (remote_addr or "")[:45] or None
