"""Prometheus metrics (contract section 6). One registry per app, so tests can build many."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["Metrics"]

# Every latency histogram resolves 0.1 ms to 30 s (contract section 6).
_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
)
_FAST = _SLOW = _BUCKETS


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # parley_process_resident_memory_bytes, _cpu_seconds_total, _open_fds, ... (Linux)
        ProcessCollector(namespace="parley", registry=r)
        self.http_requests = Counter(
            "parley_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.ws_connections = Gauge(
            "parley_ws_connections", "Open WebSocket connections", registry=r
        )
        self.ws_frames = Counter(
            "parley_ws_frames",
            "WebSocket frames by direction and type",
            ["direction", "type"],
            registry=r,
        )
        # its ("out", type) children, kept by the writers (labels() costs per call; one
        # dict for every connection rather than one each)
        self.ws_frames_out: dict[str, Any] = {}
        self.ws_dropped = Counter(
            "parley_ws_dropped",
            "WebSocket connections dropped by reason",
            ["reason"],
            registry=r,
        )
        self.turns = Counter("parley_turns", "Finished turns by status", ["status"], registry=r)
        self.errors = Counter(
            "parley_errors", "Errors by class and code", ["class", "code"], registry=r
        )
        self.dispatch_seconds = Histogram(
            "parley_dispatch_seconds",
            "chat.send received -> upstream request sent",
            buckets=_FAST,
            registry=r,
        )
        self.relay_seconds = Histogram(
            "parley_relay_seconds",
            "upstream chunk received -> frame written",
            buckets=_FAST,
            registry=r,
        )
        self.upstream_first_token_seconds = Histogram(
            "parley_upstream_first_token_seconds",
            "upstream request -> first token",
            buckets=_SLOW,
            registry=r,
        )
        self.upstream_retries = Counter(
            "parley_upstream_retries", "Upstream retries (before the first token)", registry=r
        )
        self.upstream_breaker_open = Gauge(
            "parley_upstream_breaker_open",
            "1 while the upstream circuit breaker is open",
            registry=r,
        )
        self.event_loop_lag_seconds = Gauge(
            "parley_event_loop_lag_seconds",
            "How late the event loop wakes (smoothed)",
            registry=r,
        )
        self.login_failures = Counter("parley_login_failures", "Failed logins", registry=r)
        self.cache_degraded = Gauge(
            "parley_cache_degraded",
            "1 while the cache/broker (Redis) does not answer: degraded mode",
            registry=r,
        )

        self.retention_purged = Counter(
            "parley_retention_purged_rows",
            "Rows the in-process retention job purged, by kind",
            ["kind"],
            registry=r,
        )
        self.job_runs = Counter(
            "parley_job_runs",
            "In-process scheduled job runs by job and outcome (ok, skipped, failed)",
            ["job", "outcome"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "parley_job_last_success_timestamp_seconds",
            "Unix time of each job's last successful run, from the database (any instance)",
            ["job"],
            registry=r,
        )

    def count_error(self, error_class: str, code: str) -> None:
        """One error reported to a client (an ``error`` frame or an HTTP error body)."""
        self.errors.labels(error_class, code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
