"""Structured JSON logs (structlog), one event a line, with PII redaction.

Emails are masked to ``a***@example.com``; anything that looks like a token
(JWTs, bearer values, refresh tokens, passwords) is replaced by ``[REDACTED]``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger", "mask_email", "redact"]

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
_BEARER = re.compile(r"(?i)(bearer[ .])[\w.~+/=-]+")
# What each of the three needs to match: a string without any of it is left as it is
# (one search instead of three substitutions: most logged strings are ids and names).
_SUSPECT = re.compile(r"@|eyJ|(?i:bearer)[ .]")
_SECRET_KEYS = {
    "password",
    "token",
    "accesstoken",
    "refreshtoken",
    "access_token",
    "refresh_token",
    "authorization",
    "secret",
    "api_key",
    "apikey",
    "cookie",
}


def mask_email(value: str) -> str:
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)


def redact(value: Any) -> Any:
    if isinstance(value, str):
        if _SUSPECT.search(value) is None:
            return value
        return _BEARER.sub(r"\1[REDACTED]", _JWT.sub("[REDACTED]", mask_email(value)))
    if isinstance(value, dict):
        return {
            k: ("[REDACTED]" if str(k).lower() in _SECRET_KEYS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[REDACTED]"
        else:
            event[key] = redact(event[key])
    return event


class _StdoutLogger:
    """One JSON line per event on the *current* stdout. Logging never raises into the
    caller: a closed or broken stdout loses the line, not the request."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stdout, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(level: str = "INFO", *, json: bool | None = True) -> None:
    """``json=None``: JSON lines unless stdout is a terminal (``make run``: readable lines)."""
    if json is None:
        json = not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_StdoutLogger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RedactFilter) for f in handler.filters):
            handler.addFilter(_RedactFilter())


class _RedactFilter(logging.Filter):
    """Library logs (Quart, Hypercorn, SQLAlchemy) pass the same redaction as ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def get_logger(name: str = "parley") -> Any:
    return structlog.get_logger(name)
