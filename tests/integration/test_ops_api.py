"""Health, readiness, metrics, request ids and trace propagation."""

from __future__ import annotations

from tests.support.api import ApiClient


async def test_health_ready_metrics(api: ApiClient) -> None:
    r = await api.call("GET", "/healthz")
    assert r.status == 200 and r.body == {"status": "ok"}
    r = await api.call("GET", "/readyz")
    assert r.status == 200 and r.body["database"] is True and r.body["cache"] is True
    await api.call("GET", "/api/v1/me")
    r = await api.call("GET", "/metrics")
    text = r.body.decode() if isinstance(r.body, bytes) else str(r.body)
    assert r.status == 200
    assert 'parley_http_requests_total{route="/api/v1/me",status="401"} 1.0' in text
    assert 'parley_errors_total{class="AUTH",code="AUTH_INVALID"} 1.0' in text


async def test_readyz_503_while_draining(api: ApiClient) -> None:
    api.svc.draining.set()
    r = await api.call("GET", "/readyz")
    assert r.status == 503 and r.body["status"] == "draining"
    r = await api.call("GET", "/healthz")
    assert r.status == 200


async def test_request_id_and_traceparent(api: ApiClient) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await api.call(
        "GET", "/api/v1/me", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    )
    assert r.body["error"]["traceId"] == trace
    assert len(r.headers["X-Request-Id"]) == 16
    r2 = await api.call("GET", "/api/v1/me", headers={"traceparent": "garbage"})
    assert r2.body["error"]["traceId"] != trace and len(r2.body["error"]["traceId"]) == 32
    assert r2.headers["X-Request-Id"] != r.headers["X-Request-Id"]


async def test_http_errors_are_counted(api: ApiClient) -> None:
    from server.errors import REST

    r = await api.call("GET", "/api/v1/no-such-route")
    assert r.status == 404
    r = await api.call("PUT", "/api/v1/me")
    assert r.status == 405
    text = (await api.call("GET", "/metrics")).body.decode()
    for code in ("NOT_FOUND", "METHOD_NOT_ALLOWED"):
        line = f'parley_errors_total{{class="{REST[code].cls.value}",code="{code}"}} 1.0'
        assert line in text, line


async def test_ws_without_an_upgrade_says_how_to_open_it(api: ApiClient) -> None:
    for method in ("GET", "POST"):
        r = await api.call(method, "/ws")
        assert r.status == 400, method
        assert r.body["error"]["code"] == "VALIDATION_FAILED"
        assert "upgrade offering 'chat.v1'" in r.body["error"]["message"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
