"""Fixtures of the money-core tests (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import make_config
from tests.core.support import LedgerEnv
from tests.helpers import start_system
from app.system import ActorSystem


@pytest.fixture
def ledger_env(any_db_url):
    """Two ShardLedgers on a migrated database (MariaDB and SQLite), no threads."""
    env = LedgerEnv.create(any_db_url, shard_count=2)
    yield env
    env.close()


@pytest.fixture
def mysql_ledger_env(mysql_url):
    env = LedgerEnv.create(mysql_url, shard_count=2)
    yield env
    env.close()


@pytest.fixture
def systems(mysql_url, redis_prefix):
    """Start actor systems on one MariaDB database and Redis prefix; every one is stopped at the end.

    `systems(pool=N, **config)` generates N more pool keys and starts a system (MariaDB + Redis)."""
    started: list[ActorSystem] = []

    def start(pool: int = 50, **overrides) -> ActorSystem:
        config = make_config(mysql_url, redis_prefix, **overrides)
        system = start_system(config, pool=pool)
        started.append(system)
        return system

    start.url = mysql_url
    start.redis_prefix = redis_prefix
    yield start
    for system in reversed(started):
        system.stop()
