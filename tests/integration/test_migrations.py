"""Alembic: empty -> head -> base -> head on SQLite and on MariaDB."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from store.db import create_db_engine
from store.migrate import current_revision, downgrade_to_base, upgrade_to_head
from store.schema import metadata
from tests.conftest import MySQLDatabases


def tables(url: str) -> set[str]:
    engine = create_db_engine(url, pool_size=1)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def roundtrip(url: str) -> None:
    assert tables(url) == set()
    upgrade_to_head(url)
    assert tables(url) == set(metadata.tables)
    head = current_revision(url)
    assert head is not None
    downgrade_to_base(url)
    assert tables(url) == set() and current_revision(url) is None
    upgrade_to_head(url)
    assert current_revision(url) == head


def test_sqlite_roundtrip(tmp_path: Path) -> None:
    roundtrip(f"sqlite:///{tmp_path}/m.db")


@pytest.mark.mysql
def test_mariadb_roundtrip(mysql_dbs: MySQLDatabases) -> None:
    url = mysql_dbs.create(migrate=False)
    roundtrip(url)
    engine = create_db_engine(url, pool_size=1)
    try:
        cols = {c["name"]: c for c in sa.inspect(engine).get_columns("messages")}
        assert "mediumtext" in str(cols["content"]["type"]).lower()
        assert "DATETIME(fsp=6)" in repr(cols["created_at"]["type"])
    finally:
        engine.dispose()


def test_models_match_migrations(tmp_path: Path) -> None:
    """No drift: autogenerate against head finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path}/d.db"
    upgrade_to_head(url)
    engine = create_db_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
