"""``parley jobs run retention|backup|restore-check``: one run, one line, an exit code.

Exit 0 with one line on stdout on success; exit 1 with one line on stderr naming the
failure otherwise (contract section 8).
"""

from __future__ import annotations

import sys

from jobs.dumpfmt import JobFailed
from server.settings import Settings

__all__ = ["JOBS", "run_job", "run_once"]

JOBS = ("retention", "backup", "restore-check")


def run_once(name: str, settings: Settings) -> str:
    """One run of job ``name``: its one-line report. Raises on failure."""
    if name == "retention":
        from jobs.retention import run_retention

        return run_retention(settings).line()  # records its own success (job_runs)
    if name == "backup":
        from jobs.backup import run_backup

        line = run_backup(settings).line()
    elif name == "restore-check":
        from jobs.restore_check import run_restore_check

        line = run_restore_check(settings).line()
    else:
        raise JobFailed(f"unknown job {name!r}")
    _mark_success(settings, name, line)
    return line


def _mark_success(settings: Settings, name: str, line: str) -> None:
    """For the "did not run" alert (parley_job_last_success_timestamp_seconds); the job
    itself succeeded, so a database that cannot take the note costs a warning only."""
    from store.db import create_db_engine
    from store.jobruns import mark_success

    try:
        engine = create_db_engine(settings.database_url, pool_size=1)
        try:
            mark_success(engine, name, {"line": line})
        finally:
            engine.dispose()
    except Exception as exc:
        print(f"parley: {name}: could not record the run: {type(exc).__name__}", file=sys.stderr)


def run_job(name: str, settings: Settings) -> int:
    try:
        print(run_once(name, settings))
    except JobFailed as exc:
        print(f"parley: {name} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # one line, whatever broke (database unreachable, disk full, ...)
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"parley: {name} failed: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0
