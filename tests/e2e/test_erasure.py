"""DELETE /api/v1/me on a live server (both backends): every session is revoked and every
socket of the user closes at once with 4500 (two logins, two sockets), the access token
stops working, and the export of the account is refused afterwards."""

from __future__ import annotations

import time

import trio
from trio_websocket import ConnectionClosed

from tests.support.live import LiveServer
from tests.support.wsclient import Rest, WsClient, connect


async def closed_with(ws: WsClient) -> int:
    with trio.fail_after(5):
        while True:
            try:
                await ws.ws.get_message()
            except ConnectionClosed as exc:
                return int(exc.reason.code)


async def test_delete_me_closes_every_socket_at_once(live: LiveServer) -> None:
    rest = Rest(live.http_url)
    reg = await rest.register()
    other = await rest.login(reg["email"], reg["password"])
    async with (
        connect(live.ws_url, reg["accessToken"]) as a,
        connect(live.ws_url, other["accessToken"]) as b,
    ):
        t0 = time.monotonic()
        r = await rest.call("DELETE", "/api/v1/me", token=reg["accessToken"])
        assert r.status_code == 204
        codes = [await closed_with(a), await closed_with(b)]
        assert codes == [4500, 4500]
        assert time.monotonic() - t0 < 2.0
    for token in (reg["accessToken"], other["accessToken"]):
        r = await rest.call("GET", "/api/v1/me/export", token=token)
        assert r.status_code == 401
    r = await rest.call(
        "POST", "/api/v1/auth/refresh", json={"refreshToken": other["refreshToken"]}
    )
    assert r.status_code == 401
