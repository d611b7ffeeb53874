"""Fixtures for multi-instance and chaos tests: real `parley serve` processes
(tests/support/cluster.py) on the session's MariaDB database and a test-owned Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, RedisServer

MakeCluster = Callable[..., Cluster]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port, killed at the end. Name it before
    ``cluster_factory`` in a test's arguments: fixtures end in reverse order, so the
    instances then stop (and drain) while their Redis still runs."""
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def cluster_factory(mysql_url: str, tmp_path: Path) -> Iterator[MakeCluster]:
    """``make(size, redis_url=..., env=..., args=...)``: a started :class:`Cluster` on the
    session's MariaDB database; every cluster made is stopped at the end, also on failure."""
    made: list[Cluster] = []

    def make(
        size: int = 2,
        *,
        redis_url: str,
        env: Mapping[str, str] | None = None,
        database_url: str | None = None,
        args: Iterable[str] = (),
    ) -> Cluster:
        cluster = Cluster(
            size,
            database_url=database_url or mysql_url,
            redis_url=redis_url,
            workdir=tmp_path,
            env=env,
            args=args,
        )
        made.append(cluster)
        cluster.start_all()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop_all()
