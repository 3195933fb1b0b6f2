"""Shared fixtures. Tests use the real MariaDB and Redis on this machine (started by `make test` if down);
each test gets its own database, created and dropped here, and its own Redis key prefix.

A MariaDB test database starts already migrated: the migrations run once per session into a template,
and each test's database is a copy of it (its tables' own DDL, foreign keys included, and the rows the
migrations seed). Migrating each of several hundred databases cost ~0.3-0.9 s apiece, a large share of
the suite's 15-minute budget; `test_migrations_apply_once` still migrates an empty database for real."""

from __future__ import annotations

import os
import secrets
import uuid

import atexit
import contextlib
import threading
from typing import Callable, Iterator
from urllib.parse import urlparse

import pykka
import pymysql
import pytest
import redis

from storage.db import connect_database, create_mysql_database, drop_mysql_database, migrate, mysql_params
from core.config import Config

MYSQL_SERVER = os.environ.get("WALLET_TEST_MYSQL", "mysql://root:@127.0.0.1:3306")
REDIS_URL = os.environ.get("WALLET_TEST_REDIS", "redis://127.0.0.1:6379/0")
ETCD_URL = os.environ.get("WALLET_TEST_ETCD", "http://127.0.0.1:23790")  # scripts/services.sh starts it
MASTER_KEY = bytes.fromhex("11" * 32)


def new_mysql_url() -> str:
    return f"{MYSQL_SERVER}/wallet_test_{uuid.uuid4().hex[:12]}"


class _MigratedTemplate:
    """The session's migrated template database, and what a copy of it needs: every table's DDL and
    the names of the tables the migrations put rows in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.name: str | None = None
        self.ddl: list[str] = []
        self.seeded: list[str] = []

    def _server(self) -> pymysql.connections.Connection:
        params = mysql_params(MYSQL_SERVER)
        params.pop("database")
        return pymysql.connect(**params, autocommit=True)

    def _build(self) -> None:
        url = new_mysql_url()
        create_mysql_database(url)
        db = connect_database(url)
        migrate(db)
        db.close()
        self.name = urlparse(url).path.lstrip("/")
        atexit.register(drop_mysql_database, url)
        with self._server() as conn, conn.cursor() as cur:
            cur.execute(f"SHOW FULL TABLES FROM `{self.name}` WHERE Table_type = 'BASE TABLE'")
            for (table, _) in cur.fetchall():
                cur.execute(f"SHOW CREATE TABLE `{self.name}`.`{table}`")
                self.ddl.append(cur.fetchone()[1])
                cur.execute(f"SELECT 1 FROM `{self.name}`.`{table}` LIMIT 1")
                if cur.fetchone():
                    self.seeded.append(table)

    def copy_to(self, url: str) -> None:
        with self._lock:
            if self.name is None:
                self._build()
        name = urlparse(url).path.lstrip("/")
        with self._server() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            cur.execute(f"USE `{name}`")
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")  # tables are created in name order, not FK order
            for ddl in self.ddl:
                cur.execute(ddl)
            for table in self.seeded:
                cur.execute(f"INSERT INTO `{table}` SELECT * FROM `{self.name}`.`{table}`")


_TEMPLATE = _MigratedTemplate()


def create_migrated_mysql_database(url: str) -> None:
    """A new MariaDB database at `url` holding the fully migrated schema (see the module docstring)."""
    _TEMPLATE.copy_to(url)


@contextlib.contextmanager
def _mysql_database(create: Callable[[str], None]) -> Iterator[str]:
    url = new_mysql_url()
    create(url)
    try:
        yield url
    finally:
        drop_mysql_database(url)


@pytest.fixture
def mysql_url():
    with _mysql_database(create_migrated_mysql_database) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'wallet.sqlite3'}"


@pytest.fixture(params=["mysql", "sqlite"])
def any_db_url(request, tmp_path):
    """Runs the test on both backends: MariaDB (production) and SQLite (embedded default)."""
    yield from _either_backend(request.param, tmp_path, create_migrated_mysql_database)


@pytest.fixture(params=["mysql", "sqlite"])
def empty_db_url(request, tmp_path):
    """Both backends, with no schema at all (for the migrations' own test)."""
    yield from _either_backend(request.param, tmp_path, create_mysql_database)


def _either_backend(backend: str, tmp_path, create_mysql: Callable[[str], None]) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'wallet.sqlite3'}"
        return
    with _mysql_database(create_mysql) as url:
        yield url


@pytest.fixture
def redis_prefix():
    prefix = f"wallet-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def etcd_prefix():
    """A key prefix of this test's own in the shared etcd; its keys are deleted afterwards."""
    from app.membership import etcd_client

    prefix = f"wallet-test-{secrets.token_hex(6)}"
    yield prefix
    client = etcd_client(ETCD_URL)
    client.delete_prefix(f"/{prefix}/")
    client.session.close()


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
