"""Tracing: off unless PARLEY_OTLP_ENDPOINT is set (no tracer, no spans); when on, spans go
out over OTLP/HTTP (a local collector stub receives them); a REST request without a
traceparent starts a trace whose id is the one the error body and logs carry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server import tracing
from tests.support.api import ApiClient


def test_off_by_default_costs_nothing() -> None:
    tracing.use_provider(None)
    tracing.configure_tracing("")
    assert not tracing.enabled()
    assert tracing.start_span("x", trace_id="ab" * 16) is None
    tracing.end_span(None)  # no-op


def test_otlp_export_to_the_endpoint() -> None:
    got: list[tuple[str, str, int]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", 0))
            self.rfile.read(n)
            got.append((self.path, self.headers.get("Content-Type", ""), n))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracing.use_provider(None)
        tracing.configure_tracing(f"http://127.0.0.1:{server.server_port}")
        assert tracing.enabled()
        span = tracing.start_span("probe", trace_id="cd" * 16)
        assert tracing.span_trace_id(span) == "cd" * 16
        tracing.end_span(span)
        tracing.shutdown_tracing()  # flushes the batch
    finally:
        server.shutdown()
    assert not tracing.enabled()
    assert got and got[0][0] == "/v1/traces" and got[0][1] == "application/x-protobuf"
    assert got[0][2] > 0


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


async def test_rest_span_trace_id_is_the_request_trace_id(
    api: ApiClient, spans: InMemorySpanExporter
) -> None:
    acct = await api.register()
    r = await api.call("GET", f"/api/v1/conversations/{uuid.uuid4()}", token=acct.access)
    assert r.status == 404
    trace = r.body["error"]["traceId"]
    mine = [s for s in spans.get_finished_spans() if s.name.startswith("GET /api/v1/conv")]
    assert len(mine) == 1 and mine[0].parent is None
    assert format(mine[0].context.trace_id, "032x") == trace
    assert mine[0].name == "GET /api/v1/conversations/<conversation_id>"
    assert mine[0].attributes is not None
    assert mine[0].attributes["http.response.status_code"] == 404
