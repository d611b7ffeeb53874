"""Schema migrations (Alembic), driven from code: ``parley migrate`` and serve."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "database_location", "downgrade_to_base", "upgrade_to_head"]

MIGRATIONS = Path(__file__).with_name("migrations")


def database_location(url: str) -> str:
    """Where a database URL points, for a person: a SQLite file as its absolute path
    (a relative URL depends on the working folder), a server URL without its password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return "sqlite in memory"
        return str(Path(parsed.database).resolve())
    return parsed.render_as_string(hide_password=True)


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic says a dozen INFO lines on every run, some at its first import ("setup
    plugin"), some per run ("Context impl", "Will assume"): keep its warnings and errors
    only. So this module imports Alembic inside this block, never at its top."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def alembic_config(url: str) -> Config:
    with _quiet_alembic():
        from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(url: str) -> None:
    with _quiet_alembic():
        from alembic import command

        command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    with _quiet_alembic():
        from alembic import command

        command.downgrade(alembic_config(url), "base")


def current_revision(url: str) -> str | None:
    from store.db import create_db_engine

    engine = create_db_engine(url, pool_size=1)
    try:
        with _quiet_alembic(), engine.connect() as conn:
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
