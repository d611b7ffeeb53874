"""Security headers on every HTTP response (contract section 8).

``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and framing
protection (``X-Frame-Options: DENY`` and, on responses without a policy of their own,
``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``: an API answer is
data, never a page to render or frame). The web client's pages set their own, stricter
page CSP (``server/web.py``); nothing here overrides a header a route already set.

And a body bound on every route: a declared ``Content-Length`` over the app's
``MAX_CONTENT_LENGTH`` (64 KiB) answers 413 ``PAYLOAD_TOO_LARGE`` before any route runs,
whether or not the route reads a body (a chunked body is bounded when read); an answer
that may leave a request body unread closes the connection (``Connection: close``).
"""

from __future__ import annotations

from quart import Quart, Response, request

from server.errors import ApiError

__all__ = ["API_CSP", "SECURITY_HEADERS", "install_security_headers"]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": API_CSP,
}


def install_security_headers(app: Quart) -> None:
    @app.before_request
    async def _body_bound() -> None:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit and (request.content_length or 0) > limit:
            raise ApiError("PAYLOAD_TOO_LARGE", f"body over {limit} bytes")

    @app.after_request
    async def _security_headers(resp: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            if name not in resp.headers:
                resp.headers[name] = value
        if _body_may_be_unread(resp):
            resp.headers["Connection"] = "close"
        return resp


def _body_may_be_unread(resp: Response) -> bool:
    """A refusal (or a route that takes no body) may answer before the request's body was
    read. Hypercorn then leaves those bytes on a keep-alive connection, and the client's
    next request on it can go unanswered; closing the connection after such an answer
    keeps every client's next request on a clean one."""
    declared = (request.content_length or 0) > 0 or "Transfer-Encoding" in request.headers
    if not declared:
        return False
    return resp.status_code >= 400 or request.method in ("GET", "HEAD", "DELETE", "OPTIONS")
