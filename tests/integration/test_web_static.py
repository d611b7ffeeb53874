"""The browser client's files at / (server/web.py): caching, CSP, client routes, no build."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart_trio import QuartTrio

from server import web
from server.web import IMMUTABLE, content_security_policy, register_web
from tests.support.api import ApiClient

INDEX = '<!doctype html><html><head><script type="module" src="/assets/index-abc123.js"></script></head><body><div id="root"></div></body></html>'


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text(INDEX)
    (d / "assets" / "index-abc123.js").write_text("console.log('parley')")
    (d / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return d


@pytest.fixture
async def client(dist: Path) -> AsyncIterator[Any]:
    app = QuartTrio("web-test")
    register_web(app, dist)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_index_is_not_cached_and_has_the_csp(client: Any) -> None:
    r = await client.get("/", headers={"Host": "chat.example:8000"})
    assert r.status_code == 200
    assert "text/html" in r.headers["Content-Type"]
    assert (await r.get_data(as_text=True)) == INDEX
    assert r.headers["Cache-Control"] == "no-cache"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self' ws://chat.example:8000 wss://chat.example:8000" in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_client_routes_fall_back_to_index(client: Any) -> None:
    for path in ("/c/0604b3eb-a691-4585-bb5c-97f921f03a97", "/account", "/sign-in"):
        r = await client.get(path)
        assert r.status_code == 200, path
        assert (await r.get_data(as_text=True)) == INDEX
        assert r.headers["Cache-Control"] == "no-cache"


async def test_hashed_assets_are_immutable(client: Any) -> None:
    r = await client.get("/assets/index-abc123.js")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert "javascript" in r.headers["Content-Type"]
    assert (await client.get("/assets/missing-000.js")).status_code == 404
    assert (await client.get("/assets/../index.html")).status_code == 404


async def test_top_level_files_and_missing_files(client: Any) -> None:
    r = await client.get("/favicon.svg")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "public, max-age=3600"
    assert (await client.get("/robots.txt")).status_code == 404
    r = await client.get("/index.html")  # by its name too: never cached for an hour
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-cache"
    assert (await client.get("/deep/file.js")).status_code == 404


async def test_api_and_ws_paths_are_never_the_client(client: Any) -> None:
    for path in ("/api/v1/nothing", "/api", "/ws", "/healthz/x", "/metrics/x"):
        assert (await client.get(path)).status_code == 404, path
    # whatever the method: the client asks OPTIONS whether an API route exists
    assert (await client.options("/api/v1/me/export")).status_code == 404
    assert (await client.put("/api/v1/nothing")).status_code == 404
    assert (await client.options("/account")).status_code == 200  # a client route
    assert "Expires" not in (await client.get("/")).headers


async def test_without_a_build_the_root_says_how_to_build(tmp_path: Path) -> None:
    app = QuartTrio("web-test")
    register_web(app, tmp_path / "nothing-here")
    async with app.test_app() as test_app:
        r = await test_app.test_client().get("/")
        body = await r.get_data(as_text=True)
    assert r.status_code == 503
    assert "text/html" in r.headers["Content-Type"]
    assert "not built" in body and "npm run build" in body and "make web" in body


def test_csp_ignores_a_host_header_that_is_not_a_host() -> None:
    assert content_security_policy("evil.example; script-src *").count("connect-src 'self';") == 1
    assert "ws://[::1]:8000" in content_security_policy("[::1]:8000")
    assert "connect-src 'self';" in content_security_policy(None)


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def test_the_real_app_serves_the_client_and_keeps_api_errors(api: ApiClient) -> None:
    # the real app factory registers the client; unknown API paths keep their JSON error
    r = await api.call("GET", "/api/v1/no-such-thing")
    assert r.status == 404 and r.code == "NOT_FOUND"
    r = await api.call("GET", "/healthz")
    assert r.status == 200 and r.body == {"status": "ok"}
    assert web.WEB_DIST.name == "dist" and web.WEB_DIST.parent.name == "web"
    r = await api.call("GET", "/")  # built or not, the client's page and its CSP
    assert r.status in (200, 503)
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
