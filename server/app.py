"""The app factory: Quart on trio, the REST blueprints, the request edge in one place."""

from __future__ import annotations

import functools
import re
import secrets

import orjson
import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from protocol.errors import ProtocolError
from server import access
from server.auth.identity import flush_pending_denies, watch_revocations
from server.drain import drain
from server.errors import REST, ApiError, error_body, retry_after_header
from server.health import watch_cache
from server.llm import create_provider
from server.llm.resilience import BreakerState, ResilientUpstream, UpstreamPolicy
from server.load import LoadMonitor
from server.logging import get_logger
from server.openapi import register_openapi
from server.schedule import run_schedule
from server.security import install_security_headers
from server.services import Services
from server.tracing import configure_tracing
from server.turns import TurnManager
from server.web import register_web
from server.ws import heartbeat
from server.ws.admission import SUBPROTOCOL
from server.ws.asgi import WsFront
from server.ws.connection import WsConfig, handle_websocket, sweep_connections
from server.ws.dispatch import Dispatcher
from server.ws.hub import Hub
from store.messages import interrupt_streaming

__all__ = ["create_app"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_HTTP_CODES = {
    400: "VALIDATION_FAILED",
    401: "AUTH_INVALID",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}
log = get_logger("parley.http")


def _trace_from_header(value: str | None) -> str | None:
    """W3C ``traceparent``: keep the caller's trace id when well-formed and not all zeros."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32:
        return None
    return m.group(1)


def build_upstream(svc: Services) -> ResilientUpstream:
    """The one upstream of this process, wrapped in timeouts, retries and the breaker."""
    s = svc.settings
    provider = create_provider(
        s.llm_provider,
        base_url=s.llm_base_url or None,
        api_key=s.llm_api_key or None,
        model=s.llm_model or None,
        transport=s.llm_http_client,
        sim_tokens_per_second=s.sim_tokens_per_second,
        sim_max_tokens=s.sim_max_tokens,
        sim_faults=s.sim_faults,
    )
    policy = UpstreamPolicy(
        first_token_timeout=s.upstream_first_token_timeout,
        gap_timeout=s.upstream_gap_timeout,
        total_timeout=s.upstream_total_timeout,
        max_retries=s.upstream_max_retries,
        breaker_threshold=s.upstream_breaker_threshold,
        breaker_cooldown=s.upstream_breaker_cooldown,
    )
    m = svc.metrics
    return ResilientUpstream(
        provider,
        policy,
        on_first_token=m.upstream_first_token_seconds.observe,
        on_retry=lambda _attempt, _err: m.upstream_retries.inc(),
        on_breaker_state=lambda state: m.upstream_breaker_open.set(
            1 if state is BreakerState.OPEN else 0
        ),
    )


def create_app(
    svc: Services, *, upstream: ResilientUpstream | None = None, ws_config: WsConfig | None = None
) -> QuartTrio:
    heartbeat.install()
    configure_tracing(svc.settings.otlp_endpoint)
    app = QuartTrio("parley")
    app.config["PARLEY_SERVICES"] = svc
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["JSON_SORT_KEYS"] = False

    from server.api import account, admin, auth, conversations, export, ops

    upstream = upstream or build_upstream(svc)
    turns = TurnManager(svc, upstream)
    app.register_blueprint(ops.bp)
    app.register_blueprint(auth.bp, url_prefix="/api/v1")
    app.register_blueprint(account.bp, url_prefix="/api/v1")
    app.register_blueprint(conversations.create_blueprint(turns), url_prefix="/api/v1")
    app.register_blueprint(admin.bp, url_prefix="/api/v1")
    app.register_blueprint(export.bp, url_prefix="/api/v1")
    register_web(app)
    register_openapi(app)
    install_security_headers(app)

    @app.before_request
    async def _edge_in() -> None:
        g.request_id = secrets.token_hex(8)
        g.trace_id = _trace_from_header(request.headers.get("traceparent")) or secrets.token_hex(16)
        access.request_started(g.request_id, g.trace_id)

    def _error(
        code: str, message: str, status: int, *, retryable: bool, retry_after: float | None = None
    ) -> Response:
        body = error_body(code, message, retryable, g.get("trace_id") or secrets.token_hex(16))
        resp = Response(orjson.dumps(body), status=status, content_type="application/json")
        if retry_after is not None:
            resp.headers["Retry-After"] = retry_after_header(retry_after)
        return resp

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        svc.metrics.count_error(exc.error_class.value, exc.code)
        return _error(
            exc.code, exc.message, exc.status, retryable=exc.retryable, retry_after=exc.retry_after
        )

    @app.errorhandler(ProtocolError)
    async def _protocol_error(exc: ProtocolError) -> Response:
        return await _api_error(ApiError.from_protocol(exc))

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "SERVER_ERROR")
        svc.metrics.count_error(REST[code].cls.value, code)  # 404 of no route, 405, 413, …
        return _error(code, exc.description or code, status, retryable=REST[code].retryable)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception) -> Response:
        log.error("unhandled_error", path=request.path, traceId=g.get("trace_id"), exc_info=exc)
        svc.metrics.count_error("SERVER", "SERVER_ERROR")
        return _error("SERVER_ERROR", "internal error", 500, retryable=True)

    @app.after_request
    async def _edge_out(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id") or secrets.token_hex(8)
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        svc.metrics.http_requests.labels(rule, str(resp.status_code)).inc()
        access.request_finished(rule, resp)
        return resp

    ws_cfg = ws_config or WsConfig.from_settings(svc.settings)
    hub = Hub(tick=ws_cfg.sweep_seconds)
    load = LoadMonitor()

    async def _drain() -> None:
        await drain(
            svc,
            hub,
            turns,
            grace=svc.settings.drain_seconds,
            reconnect_after_ms=ws_cfg.drain_reconnect_ms,
        )

    app.config["PARLEY_DRAIN"] = _drain
    background = trio.CancelScope()

    _ws = functools.partial(
        handle_websocket, svc, hub, turns, ws_cfg, load, Dispatcher(svc, turns, ws_cfg)
    )

    @app.route("/ws", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def _ws_without_upgrade() -> Response:
        raise ApiError(
            "VALIDATION_FAILED",
            f"/ws is the WebSocket endpoint: open it with an upgrade offering {SUBPROTOCOL!r}",
        )

    def _refused(err: ApiError) -> None:
        svc.metrics.count_error(err.error_class.value, err.code)

    # /ws is served from ASGI in front of Quart (server/ws/asgi.py); the REST API on Quart
    app.asgi_app = WsFront(app.asgi_app, _ws, on_refused=_refused)  # type: ignore[method-assign,assignment]

    background_done = trio.Event()

    async def _background() -> None:
        try:
            with background:
                async with trio.open_nursery() as nursery:
                    await nursery.start(turns.run)
                    nursery.start_soon(watch_revocations, svc.cache, hub.close_session)
                    nursery.start_soon(sweep_connections, svc, hub, ws_cfg)
                    nursery.start_soon(load.run, svc.metrics.event_loop_lag_seconds.set)
                    nursery.start_soon(flush_pending_denies, svc)
                    nursery.start_soon(watch_cache, svc)
                    nursery.start_soon(run_schedule, svc)
        finally:
            background_done.set()

    @app.before_serving
    async def _start() -> None:
        if svc.settings.single_instance:
            # No other instance can own a streaming turn: any left are from a dead process.
            n = await svc.db.tx(interrupt_streaming)
            if n:
                log.warning("interrupted_leftover_turns", count=n)
        app.nursery.start_soon(_background)

    @app.after_serving
    async def _close() -> None:
        background.cancel()
        # Turns end (interrupted, stored, chat.done pushed) before the pools close.
        with trio.move_on_after(10):
            await background_done.wait()
        await upstream.aclose()
        await svc.aclose()

    return app
