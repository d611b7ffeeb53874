"""One worker of ``parley serve --workers N`` (``python -m server.worker``, started by
server/supervisor.py with the listening socket's descriptor and its index in the
environment). Not a command for people: ``parley serve`` starts it."""

from __future__ import annotations

import logging
import os
import socket
import sys

import structlog

from server.logging import configure_logging
from server.serve import SWITCH_INTERVAL, run_worker
from server.settings import SettingsError, load_settings
from server.supervisor import FD_ENV, INDEX_ENV

__all__ = ["main"]


class _NoRunningOn(logging.Filter):
    """The supervisor says "Running on" once for all workers; Hypercorn would say it N times."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Running on")


def main() -> int:
    try:
        fd = int(os.environ.pop(FD_ENV))
        index = int(os.environ.pop(INDEX_ENV))
    except (KeyError, ValueError):
        print("parley: server.worker is started by `parley serve --workers N`", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"parley: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json=settings.log_json)
    sys.setswitchinterval(SWITCH_INTERVAL)
    structlog.contextvars.bind_contextvars(worker=index)  # on every line this process logs
    logging.getLogger("hypercorn.error").addFilter(_NoRunningOn())
    return run_worker(settings, socket.socket(fileno=fd), worker=index)


if __name__ == "__main__":
    raise SystemExit(main())
