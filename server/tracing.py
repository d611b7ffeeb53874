"""OpenTelemetry spans: REST requests and turns, exported over OTLP/HTTP when
``PARLEY_OTLP_ENDPOINT`` is set; otherwise every helper here returns at once (no tracer,
no span objects, no cost).

A span's trace id is the trace id the logs carry: a REST request continues the caller's
W3C ``traceparent`` (or starts a trace whose id becomes the request's ``traceId``); a turn
continues the ``traceId`` of its ``chat.send`` frame. Tests install an SDK provider with
an in-memory exporter through :func:`use_provider`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from server.logging import get_logger

__all__ = [
    "configure_tracing",
    "enabled",
    "end_span",
    "perf_to_ns",
    "shutdown_tracing",
    "span_trace_id",
    "start_span",
    "use_provider",
]

log = get_logger("parley.tracing")

_tracer: Any = None
_provider: Any = None


def use_provider(provider: Any | None) -> None:
    """Trace with this SDK ``TracerProvider`` (None: tracing off)."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("parley") if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


def _traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def configure_tracing(endpoint: str) -> None:
    """Once per process: export spans in batches to ``endpoint`` (OTLP over HTTP)."""
    if not endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "parley"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint)))
    )
    use_provider(provider)
    log.info("tracing_on", endpoint=_traces_url(endpoint))


def shutdown_tracing() -> None:
    if _provider is not None and hasattr(_provider, "shutdown"):
        _provider.shutdown()
    use_provider(None)


def perf_to_ns(perf: float) -> int:
    """A ``time.perf_counter()`` instant as wall-clock nanoseconds (span timestamps)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


def start_span(
    name: str,
    *,
    trace_id: str | None = None,
    parent_span_id: str | None = None,
    parent: Any = None,
    start_ns: int | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A started span, or None when tracing is off. ``parent``: a span of ours; else
    ``trace_id`` (32 hex) with ``parent_span_id`` (16 hex, the caller's span) continues a
    remote trace; else a new trace."""
    if _tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    ctx = None
    if parent is not None:
        ctx = trace.set_span_in_context(parent)
    elif trace_id:
        remote = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(parent_span_id or secrets.token_hex(8), 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    return _tracer.start_span(
        name, context=ctx, start_time=start_ns, attributes=dict(attributes or {})
    )


def span_trace_id(span: Any) -> str | None:
    if span is None:
        return None
    return format(span.get_span_context().trace_id, "032x")


def end_span(span: Any, *, error: str | None = None, **attributes: Any) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
