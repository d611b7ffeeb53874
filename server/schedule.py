"""``PARLEY_JOBS_SCHEDULE``: scheduled jobs run by the server itself, for the single-process
deployment (``retention@03:00,backup@03:30``, times in UTC). Other deployments run
``parley jobs run NAME`` from cron, a systemd timer or a Kubernetes CronJob
(deploy/). A job runs in a worker thread; retention's lease keeps a second instance out
anyway. Each run is counted (``parley_job_runs_total{job,outcome}``) and retention's rows
too (``parley_retention_purged_rows_total{kind}``).
"""

from __future__ import annotations

import datetime as dt
import re

import trio

from jobs.run import JOBS, run_once
from server.logging import get_logger
from server.services import Services

__all__ = ["ScheduleError", "next_run", "parse_schedule", "run_now", "run_schedule"]

log = get_logger("parley.jobs")

_ENTRY = re.compile(r"^([a-z-]+)@([01]\d|2[0-3]):([0-5]\d)$")


class ScheduleError(ValueError):
    """A bad ``PARLEY_JOBS_SCHEDULE``; the message names the entry."""


def parse_schedule(raw: str) -> list[tuple[str, dt.time]]:
    out: list[tuple[str, dt.time]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        m = _ENTRY.match(part)
        if m is None or m.group(1) not in JOBS:
            raise ScheduleError(
                f"PARLEY_JOBS_SCHEDULE: {part!r} is not JOB@HH:MM with JOB one of {', '.join(JOBS)}"
            )
        out.append((m.group(1), dt.time(int(m.group(2)), int(m.group(3)))))
    return out


def next_run(at: dt.time, now: dt.datetime) -> dt.datetime:
    """The next ``at`` (UTC) strictly after ``now`` (aware UTC)."""
    today = dt.datetime.combine(now.date(), at, tzinfo=dt.UTC)
    return today if today > now else today + dt.timedelta(days=1)


async def run_now(svc: Services, job: str) -> str | None:
    """One run of ``job`` in a worker thread, counted; the report line, None on failure."""
    m = svc.metrics
    try:
        if job == "retention":
            from jobs.retention import run_retention

            # abandoned on shutdown: a drain never waits for a job (a cut retention batch
            # rolls back; its lease expires in 10 minutes)
            report = await trio.to_thread.run_sync(
                run_retention, svc.settings, abandon_on_cancel=True
            )
            for kind, n in report.counts.items():
                if n:
                    m.retention_purged.labels(kind).inc(n)
            line = report.line()
            m.job_runs.labels(job, "skipped" if report.skipped else "ok").inc()
        else:
            line = await trio.to_thread.run_sync(
                run_once, job, svc.settings, abandon_on_cancel=True
            )
            m.job_runs.labels(job, "ok").inc()
    except Exception as exc:
        m.job_runs.labels(job, "failed").inc()
        log.error("job_failed", job=job, error=f"{type(exc).__name__}: {exc}"[:300])
        return None
    log.info("job_done", job=job, report=line)
    return line


async def run_schedule(svc: Services) -> None:
    """Forever: sleep until the next scheduled job, run it (one at a time)."""
    entries = parse_schedule(svc.settings.jobs_schedule)
    if not entries:
        return
    log.info("jobs_scheduled", schedule=svc.settings.jobs_schedule)
    while True:
        now = dt.datetime.now(dt.UTC)
        when, job = min((next_run(at, now), job) for job, at in entries)
        await trio.sleep((when - now).total_seconds())
        await run_now(svc, job)
