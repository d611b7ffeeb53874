"""What the cluster benchmarks share: two `parley serve` instances on a fresh MariaDB
database (created, migrated, dropped) and a Redis of their own, and a description of the
machine they ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pymysql

from store.migrate import upgrade_to_head
from tests.support.cluster import Cluster, RedisServer

__all__ = ["cluster", "fresh_database", "machine"]

HOST = os.environ.get("PARLEY_BENCH_MYSQL_HOST", "127.0.0.1")


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the local MariaDB (root, empty password), migrated; dropped after."""
    name = f"parley_bench_{secrets.token_hex(4)}"
    admin = pymysql.connect(host=HOST, user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        url = f"mysql+pymysql://root@{HOST}:3306/{name}"
        upgrade_to_head(url)
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def cluster(size: int, env: Mapping[str, str]) -> Iterator[Cluster]:
    """``size`` started instances on a fresh database and a Redis of their own; all of it
    is stopped and dropped at the end. ``PARLEY_BENCH_WORKDIR``: a folder to keep their
    logs in."""
    keep = os.environ.get("PARLEY_BENCH_WORKDIR")  # keep the instances' logs there
    with (
        contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory() as tmp,
        fresh_database() as url,
        RedisServer(Path(tmp)) as redis,
        Cluster(size, database_url=url, redis_url=redis.url, workdir=Path(tmp), env=env) as c,
    ):
        yield c
