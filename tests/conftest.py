"""Shared fixtures. Tests use the real MariaDB and Redis on this machine (started by `make test` if down);
each test gets its own database, created and dropped here, and its own Redis key prefix."""

from __future__ import annotations

import os
import secrets
import uuid

import pykka
import pytest
import redis

from storage.db import connect_database, create_mysql_database, drop_mysql_database, migrate
from core.config import Config

MYSQL_SERVER = os.environ.get("WALLET_TEST_MYSQL", "mysql://root:@127.0.0.1:3306")
REDIS_URL = os.environ.get("WALLET_TEST_REDIS", "redis://127.0.0.1:6379/0")
MASTER_KEY = bytes.fromhex("11" * 32)


def new_mysql_url() -> str:
    return f"{MYSQL_SERVER}/wallet_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mysql_url():
    url = new_mysql_url()
    create_mysql_database(url)
    yield url
    drop_mysql_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'wallet.sqlite3'}"


@pytest.fixture(params=["mysql", "sqlite"])
def any_db_url(request, tmp_path):
    """Runs the test on both backends: MariaDB (production) and SQLite (embedded default)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wallet.sqlite3'}"
        return
    url = new_mysql_url()
    create_mysql_database(url)
    yield url
    drop_mysql_database(url)


@pytest.fixture
def redis_prefix():
    prefix = f"wallet-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def make_config(db_url: str, redis_prefix: str | None = None, **overrides) -> Config:
    values = dict(database_url=db_url, master_key=MASTER_KEY, shards=4, confirmations=6)
    if redis_prefix is not None:
        values.update(redis_url=REDIS_URL, redis_prefix=redis_prefix)
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def migrated_db(any_db_url):
    db = connect_database(any_db_url)
    migrate(db)
    yield db
    db.close()


@pytest.fixture(autouse=True)
def _no_actor_survives():
    yield
    survivors = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all()
    assert not survivors, f"actors left running: {survivors}"
