"""Security headers on every HTTP response (contract section 8).

``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and framing
protection (``X-Frame-Options: DENY`` and, on responses without a policy of their own,
``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``: an API answer is
data, never a page to render or frame). The web client's pages set their own, stricter
page CSP (``server/web.py``); nothing here overrides a header a route already set.
"""

from __future__ import annotations

from quart import Quart, Response

__all__ = ["API_CSP", "SECURITY_HEADERS", "install_security_headers"]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": API_CSP,
}


def install_security_headers(app: Quart) -> None:
    @app.after_request
    async def _security_headers(resp: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            if name not in resp.headers:
                resp.headers[name] = value
        return resp
