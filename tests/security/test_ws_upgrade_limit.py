"""The WebSocket-upgrade limit per client address (HTTP 429 before the upgrade); the
instance cap (1013) is tests/e2e/test_caps.py::test_instance_cap_closes_1013."""

from __future__ import annotations

import secrets

import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.support.live import LiveServer
from tests.support.wsclient import Rest

LIVE_SETTINGS = {"ws_upgrades_per_ip_per_hour": 3}


async def test_upgrades_per_ip_are_limited(live: LiveServer) -> None:
    token = (await Rest(live.http_url).register())["accessToken"]
    # the server trusts X-Forwarded-For in tests: an address of this test's own
    ip = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(250) + 1}"
    other = "10.255." + ip.split(".", 2)[2]
    protos = ["chat.v1", f"bearer.{token}"]
    for _ in range(3):
        async with open_websocket_url(
            live.ws_url, subprotocols=protos, extra_headers=[("X-Forwarded-For", ip)]
        ) as ws:
            assert (await ws.get_message()).startswith('{"type":"session.ready"')
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(
            live.ws_url, subprotocols=protos, extra_headers=[("X-Forwarded-For", ip)]
        ):
            pass
    assert rejected.value.status_code == 429
    assert b"too many WebSocket upgrades" in (rejected.value.body or b"")
    headers = {k.decode().lower(): v.decode() for k, v in rejected.value.headers}
    assert 1 <= int(headers["retry-after"]) <= 3600
    async with open_websocket_url(  # another address is not affected
        live.ws_url, subprotocols=protos, extra_headers=[("X-Forwarded-For", other)]
    ) as ws:
        assert (await ws.get_message()).startswith('{"type":"session.ready"')
