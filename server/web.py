"""The browser client's files at ``/`` (the Vite build in ``web/dist``).

- ``/assets/*``: content-hashed names, cached for a year (``immutable``);
- ``index.html`` (for ``/`` and every client-side route, i.e. any other path without a
  file extension): ``no-cache`` and a Content-Security-Policy that allows only this origin
  (scripts, styles, fetch and the WebSocket to the same host);
- ``/api/...`` and ``/ws`` are never answered here: unknown API paths keep their JSON 404.

Without a build, ``/`` answers a short page that says how to make one.
"""

from __future__ import annotations

import re
from pathlib import Path

from quart import Quart, Response, request, send_from_directory
from werkzeug.exceptions import NotFound
from werkzeug.routing import PathConverter

__all__ = ["WEB_DIST", "content_security_policy", "register_web"]

WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_RESERVED = ("api", "ws", "healthz", "readyz", "metrics")


class ClientPath(PathConverter):
    """A path that is not the server's own: the fallback route never matches ``/api/...``,
    ``/ws`` or the ops endpoints, whatever the method, so those keep their own 404/405."""

    regex = r"(?!(?:" + "|".join(_RESERVED) + r")(?:/|$))[^/].*?"


NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley: web client not built</title></head>
<body>
<h1>The Parley web client is not built</h1>
<p>The server is running (the API is at <code>/api/v1</code>, the WebSocket at <code>/ws</code>),
but <code>web/dist</code> is missing. Build the client, then reload this page:</p>
<pre>make web          # or: cd web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p><code>make run</code> builds it for you before it starts the server.</p>
</body></html>
"""


def content_security_policy(host: str | None) -> str:
    """The policy for the client's pages: this origin only, plus its WebSocket."""
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"font-src 'self'; connect-src {connect}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def _page_headers(resp: Response, cache: str) -> Response:
    resp.headers["Cache-Control"] = cache
    resp.headers.pop("Expires", None)  # Cache-Control says it all
    resp.headers["Content-Security-Policy"] = content_security_policy(request.host)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


def register_web(app: Quart, dist: Path | None = None) -> None:
    """Serve the built client from `dist` (default: ``web/dist`` next to the package)."""
    root = dist if dist is not None else WEB_DIST

    async def _index() -> Response:
        if not (root / "index.html").is_file():
            resp = Response(NOT_BUILT, status=503, content_type="text/html; charset=utf-8")
            return _page_headers(resp, "no-store")
        resp = await send_from_directory(root, "index.html")
        return _page_headers(resp, NO_CACHE)

    @app.get("/")
    async def web_root() -> Response:
        return await _index()

    @app.get("/assets/<path:name>")
    async def web_asset(name: str) -> Response:
        resp = await send_from_directory(root / "assets", name)
        return _page_headers(resp, IMMUTABLE)

    app.url_map.converters["clientpath"] = ClientPath

    @app.get("/<clientpath:path>")
    async def web_route(path: str) -> Response:
        last = path.rsplit("/", 1)[-1]
        if path == "index.html":
            return await _index()
        if "." in last:
            # a file at the top of the build (favicon, robots.txt); never index.html here
            if "/" in path:
                raise NotFound()
            resp = await send_from_directory(root, path)
            return _page_headers(resp, "public, max-age=3600")
        return await _index()
