"""``parley jobs run retention|backup|restore-check``: one run, one line, an exit code.

Exit 0 with one line on stdout on success; exit 1 with one line on stderr naming the
failure otherwise (contract section 8).
"""

from __future__ import annotations

import sys

from jobs.dumpfmt import JobFailed
from server.settings import Settings

__all__ = ["JOBS", "run_job"]

JOBS = ("retention", "backup", "restore-check")


def run_job(name: str, settings: Settings) -> int:
    try:
        if name == "retention":
            from jobs.retention import run_retention

            print(run_retention(settings).line())
        elif name == "backup":
            from jobs.backup import run_backup

            print(run_backup(settings).line())
        elif name == "restore-check":
            from jobs.restore_check import run_restore_check

            print(run_restore_check(settings).line())
        else:
            raise JobFailed(f"unknown job {name!r}")
    except JobFailed as exc:
        print(f"parley: {name} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # one line, whatever broke (database unreachable, disk full, ...)
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"parley: {name} failed: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0
