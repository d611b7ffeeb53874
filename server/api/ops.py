"""Liveness, readiness and metrics (no /api/v1 prefix)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from server.api.common import services

__all__ = ["bp"]

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    svc = services()
    if svc.draining.is_set():
        return {"status": "draining"}, 503
    db_ok = await svc.db.ping()
    cache_ok = await svc.cache.ping()
    ok = db_ok  # Redis down degrades features but the instance can still serve
    body = {
        "status": "ready" if ok else "unavailable",
        "database": db_ok,
        "cache": cache_ok,
        "degraded": not cache_ok,
    }
    return body, 200 if ok else 503


@bp.get("/metrics")
async def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(services().metrics.render(), content_type=CONTENT_TYPE_LATEST)
