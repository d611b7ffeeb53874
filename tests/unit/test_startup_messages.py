"""The one-line start-up refusals and the database location that serve and migrate print."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import pytest

from server.serve import bind_error, hypercorn_config
from server.settings import Settings
from store.migrate import database_location


def test_bind_error_names_the_setting_to_change() -> None:
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert bind_error("127.0.0.1", 8000, in_use) == (
        "parley serve: 127.0.0.1:8000 is already in use; choose another with --port or PARLEY_PORT"
    )
    assert bind_error("::1", 8000, in_use).startswith("parley serve: [::1]:8000 is already")
    denied = bind_error("0.0.0.0", 80, OSError(errno.EACCES, "Permission denied"))
    assert "no permission to listen on 0.0.0.0:80" in denied and "--port or PARLEY_PORT" in denied
    elsewhere = bind_error(
        "10.9.9.9", 8000, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    )
    assert elsewhere == (
        "parley serve: cannot listen on 10.9.9.9:8000 (Cannot assign requested address); "
        "check --host or PARLEY_HOST"
    )
    unknown = bind_error("no-such-host.invalid", 8000, socket.gaierror(-2, "Name not known"))
    assert "(Name not known); check --host or PARLEY_HOST" in unknown


def test_database_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    assert database_location("sqlite:///./parley-data/parley.db") == str(
        here / "parley-data" / "parley.db"
    )
    assert database_location("sqlite:////srv/parley/p.db") == "/srv/parley/p.db"
    assert database_location("sqlite://") == "sqlite in memory"
    assert database_location("sqlite:///:memory:") == "sqlite in memory"
    mysql = database_location("mysql+pymysql://parley:s3cret@db.internal:3306/parley")
    assert mysql == "mysql+pymysql://parley:***@db.internal:3306/parley"


def test_hypercorn_logs_through_the_root_handler_only() -> None:
    """Its own stderr handler beside the root one printed "Running on" twice."""
    logging.getLogger("hypercorn.error").addHandler(logging.StreamHandler())
    cfg = hypercorn_config(Settings())
    assert cfg.errorlog is logging.getLogger("hypercorn.error")
    assert cfg.log.error_logger is cfg.errorlog
    assert cfg.errorlog.handlers == [] and cfg.errorlog.propagate
