"""PARLEY_JOBS_SCHEDULE and the jobs' metrics: the schedule's grammar and next run, an
in-process retention run counted, and the last success of any instance's run shown as
parley_job_last_success_timestamp_seconds (the "did not run" alert) on both backends."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from server.schedule import ScheduleError, next_run, parse_schedule, run_now
from server.settings import SettingsError, load_settings
from store.migrate import upgrade_to_head
from tests.conftest import MySQLDatabases, make_settings


def test_schedule_grammar() -> None:
    assert parse_schedule("retention@03:00, backup@03:30") == [
        ("retention", dt.time(3, 0)),
        ("backup", dt.time(3, 30)),
    ]
    assert parse_schedule("") == []
    for bad in ("retention", "retention@3:00", "nope@03:00", "backup@24:00"):
        with pytest.raises(ScheduleError):
            parse_schedule(bad)
        with pytest.raises(SettingsError, match="PARLEY_JOBS_SCHEDULE"):
            load_settings(jobs_schedule=bad)


def test_next_run() -> None:
    now = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
    assert next_run(dt.time(3, 30), now) == now.replace(minute=30)
    assert next_run(dt.time(3, 0), now) == now + dt.timedelta(days=1)
    assert next_run(dt.time(2, 0), now) == dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/jobs.db"
        upgrade_to_head(url)
        return url
    dbs: MySQLDatabases = request.getfixturevalue("mysql_dbs")
    return dbs.create()


async def test_in_process_run_and_job_metrics(
    backend: str, fresh_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from server.app import create_app
    from server.services import build_services
    from tests.support.api import ApiClient

    settings = make_settings(
        backend, request, tmp_path, database_url=fresh_url, jobs_schedule="retention@03:00"
    )
    svc = build_services(settings, passwords=request.getfixturevalue("fast_passwords"))
    app = create_app(svc)
    async with app.test_app() as test_app:
        api = ApiClient(test_app.test_client(), svc)
        guest = await api.guest()
        assert guest.user["kind"] == "guest"
        before = await api.call("GET", "/metrics")
        assert b"parley_job_last_success_timestamp_seconds{" not in before.body
        line = await run_now(svc, "retention")
        assert line is not None and line.startswith("retention: purged")
        text = (await api.call("GET", "/metrics")).body.decode()
        assert 'parley_job_runs_total{job="retention",outcome="ok"} 1.0' in text
        stamp = next(
            float(x.split()[-1])
            for x in text.splitlines()
            if x.startswith('parley_job_last_success_timestamp_seconds{job="retention"}')
        )
        assert abs(stamp - dt.datetime.now(dt.UTC).timestamp()) < 60
        # a job that fails is counted as failed, the server goes on
        svc.settings.backup_dir = Path("/proc/parley-cannot-write-here")
        assert await run_now(svc, "backup") is None
        text = (await api.call("GET", "/metrics")).body.decode()
        assert 'parley_job_runs_total{job="backup",outcome="failed"} 1.0' in text
