"""Scheduled jobs' shared row (``job_runs``): a lease so that two instances never run one
job at once, and the outcome of the last successful run (the "did not run" alert)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from store.db import utcnow
from store.schema import job_runs

__all__ = ["LEASE", "job_lock", "last_runs", "mark_success", "release_lock"]

LEASE = dt.timedelta(minutes=10)


def job_lock(engine: Engine, name: str, owner: str, now: dt.datetime) -> bool:
    """Take (or renew) the job's lease; False while another owner holds it."""
    with engine.begin() as conn:
        if conn.execute(sa.select(job_runs.c.name).where(job_runs.c.name == name)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(job_runs.insert().values(name=name))
            except sa.exc.IntegrityError:
                pass  # the other instance made it first
        got = conn.execute(
            job_runs.update()
            .where(
                job_runs.c.name == name,
                sa.or_(
                    job_runs.c.locked_until.is_(None),
                    job_runs.c.locked_until < now,
                    job_runs.c.lock_owner == owner,
                ),
            )
            .values(lock_owner=owner, locked_until=now + LEASE)
        )
        return got.rowcount == 1


def release_lock(engine: Engine, name: str, owner: str, result: dict[str, int] | None) -> None:
    values: dict[str, object] = {"lock_owner": None, "locked_until": None}
    if result is not None:
        values |= {"last_success_at": utcnow(), "last_result": json.dumps(result)}
    with engine.begin() as conn:
        conn.execute(
            job_runs.update()
            .where(job_runs.c.name == name, job_runs.c.lock_owner == owner)
            .values(**values)
        )


def last_runs(conn: Connection) -> dict[str, tuple[dt.datetime, dict[str, Any]]]:
    """Each job's last success: when, and what it reported."""
    out: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
    for row in conn.execute(sa.select(job_runs).where(job_runs.c.last_success_at.is_not(None))):
        try:
            result = json.loads(row.last_result or "{}")
        except ValueError:
            result = {}
        out[row.name] = (row.last_success_at, result if isinstance(result, dict) else {})
    return out


def mark_success(engine: Engine, name: str, result: dict[str, Any]) -> None:
    """A job without a lease of its own (backup, restore-check) records its success."""
    with engine.begin() as conn:
        if conn.execute(sa.select(job_runs.c.name).where(job_runs.c.name == name)).first() is None:
            try:
                with conn.begin_nested():
                    conn.execute(job_runs.insert().values(name=name))
            except sa.exc.IntegrityError:
                pass
        conn.execute(
            job_runs.update()
            .where(job_runs.c.name == name)
            .values(last_success_at=utcnow(), last_result=json.dumps(result))
        )
