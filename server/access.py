"""The HTTP request edge for logs, traces and the audit trail.

:func:`request_started` (first thing of every request) clears and binds the log context
(``requestId``, ``traceId``; ``userId`` once the caller is known: :func:`bind_user`),
the audit context (ip, user agent, trace id: every audit event of the request carries
them) and, when tracing is on, starts the request's span.
:func:`request_finished` writes the access line: route template, status, duration, bytes.
"""

from __future__ import annotations

import re
import time

import structlog
from quart import Response, current_app, g, request

from server import tracing
from server.logging import get_logger
from server.net import forwarded_ip
from store.audit import AuditContext, audit_context

__all__ = ["bind_user", "request_finished", "request_started"]

log = get_logger("parley.access")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def request_started(request_id: str, trace_id: str) -> None:
    g.started_at = time.perf_counter()
    if tracing.enabled():
        m = _TRACEPARENT.match((request.headers.get("traceparent") or "").strip().lower())
        continued = m is not None and m.group(1) == trace_id
        g.span = tracing.start_span(
            f"{request.method} {request.path}",
            trace_id=trace_id if continued else None,
            parent_span_id=m.group(2) if continued and m else None,
            attributes={"http.request.method": request.method},
        )
        if not continued:  # a new trace: its id is the request's traceId
            trace_id = g.trace_id = tracing.span_trace_id(g.span) or trace_id
    # (a task of its own per request: binding never leaks into another request; the
    # process-wide keys, such as a worker's index, stay)
    structlog.contextvars.bind_contextvars(requestId=request_id, traceId=trace_id)
    svc = current_app.config["PARLEY_SERVICES"]
    ip = forwarded_ip(
        request.headers.get("X-Forwarded-For", ""),
        request.remote_addr,
        trust_proxy=svc.settings.trust_proxy_headers,
    )
    audit_context.set(
        AuditContext(
            ip=ip,
            user_agent=(request.headers.get("User-Agent") or "")[:255] or None,
            trace_id=trace_id,
        )
    )


def bind_user(user_id: str) -> None:
    structlog.contextvars.bind_contextvars(userId=user_id)


def request_finished(route: str, resp: Response) -> None:
    took = time.perf_counter() - g.get("started_at", time.perf_counter())
    span = g.pop("span", None)
    if span is not None:
        span.update_name(f"{request.method} {route}")
        tracing.end_span(
            span,
            error=f"HTTP {resp.status_code}" if resp.status_code >= 500 else None,
            **{"http.route": route, "http.response.status_code": resp.status_code},
        )
    log.info(
        "http_access",
        method=request.method,
        route=route,
        status=resp.status_code,
        durationMs=round(took * 1000, 2),
        bytes=resp.content_length,
    )
