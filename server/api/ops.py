"""Liveness, readiness and metrics (no /api/v1 prefix)."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import trio
from quart import Blueprint, Response

from server.api.common import services
from server.services import Services
from store.jobruns import last_runs

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

    svc = services()
    await _job_gauges(svc)
    return Response(svc.metrics.render(), content_type=CONTENT_TYPE_LATEST)


async def _job_gauges(svc: Services) -> None:
    """The scheduled jobs' last successes, whichever instance or cron ran them (the "did
    not run" alert); a database that does not answer within 1 s leaves them as they were."""
    with trio.move_on_after(1.0), contextlib.suppress(Exception):
        runs = await svc.db.read(last_runs)
        for name, (at, _result) in runs.items():
            svc.metrics.job_last_success.labels(name).set(at.replace(tzinfo=dt.UTC).timestamp())
