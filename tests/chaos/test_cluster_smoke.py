"""The cluster fixture itself: two instances on one database and a test-owned Redis;
one is killed -9 and started again on its port; the Redis is killed -9 and restarted."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.chaos.conftest import MakeCluster
from tests.support.cluster import RedisServer
from tests.support.wsclient import Rest

pytestmark = [pytest.mark.mysql, pytest.mark.redis]


def redis_cli_ping(port: int) -> str:
    r = subprocess.run(
        ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=10
    )
    return r.stdout.strip()


async def test_cluster_smoke(redis_server: RedisServer, cluster_factory: MakeCluster) -> None:
    c = cluster_factory(2, redis_url=redis_server.url)
    assert len({c[0].port, c[1].port}) == 2
    # one database and one key ring: a user made on 0 works on 1
    user = await Rest(c.url(0)).register()
    await Rest(c.url(1)).conversation(user["accessToken"])

    c.kill9(0)
    assert not c[0].running()
    with pytest.raises(httpx.TransportError):
        await Rest(c.url(0)).call("GET", "/healthz")
    assert (await Rest(c.url(1)).call("GET", "/healthz")).status_code == 200
    await c.astart(0)  # the same port again, /readyz 200
    assert (await Rest(c.url(0)).call("GET", "/readyz")).status_code == 200
    await Rest(c.url(0)).conversation(user["accessToken"])

    redis_server.kill9()
    assert redis_cli_ping(redis_server.port) != "PONG"
    redis_server.start()  # the same port
    assert redis_cli_ping(redis_server.port) == "PONG"

    assert await c.aterm(1) == 0
    assert "Traceback" not in c[1].log()
