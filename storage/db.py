"""Bind the models to one database chosen by URL: MariaDB/MySQL (pooled) or SQLite (embedded)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.migrations import Runner
from playhouse.pool import PooledMySQLDatabase

from core.errors import ConfigError
from core.limits import DB_POOL_MAX_CONNECTIONS, DB_POOL_WAIT_S

log = logging.getLogger(__name__)

database_proxy = peewee.DatabaseProxy()

# DECIMAL(65,0) is exact on MySQL; SQLite would turn decimals into floats, so it stores digits as TEXT.
MYSQL_FIELD_TYPES = {"AMOUNT": "DECIMAL(65,0)"}
SQLITE_FIELD_TYPES = {"AMOUNT": "TEXT"}

# Strict mode: an out-of-range or truncated value is an error, never a silent clamp.
MYSQL_SQL_MODE = (
    "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ZERO_DATE,NO_ZERO_IN_DATE,NO_ENGINE_SUBSTITUTION"
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class _ReadCommittedMySQLDatabase(peewee.MySQLDatabase):
    """Every new connection reads committed data. Under InnoDB's default REPEATABLE READ, a shard's
    `UPDATE outbox ... WHERE op_id IN (...)` that the optimizer runs as a scan (a small table) takes
    next-key locks on other shards' rows, and two shards committing at once deadlock (error 1213): a
    spurious CommitFailed. Each row has one writer, so nothing here needs gap locks."""

    def _connect(self):
        conn = super()._connect()
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn


class WalletMySQLDatabase(PooledMySQLDatabase, _ReadCommittedMySQLDatabase):
    """Pooled (one connection per actor thread), strict and READ COMMITTED."""




def sqlite_path(url: str) -> str:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else urlparse(url).path


def mysql_params(url: str) -> dict:
    """Server and credentials of a MySQL URL (`database` empty for a server-level URL)."""
    parsed = urlparse(url)
    return {"database": (parsed.path or "/").lstrip("/"), "user": unquote(parsed.username or "root"),
            "password": unquote(parsed.password or ""), "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 3306}


def make_database(url: str, max_connections: int = DB_POOL_MAX_CONNECTIONS) -> peewee.Database:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = sqlite_path(url)
        if not path or path == ":memory:":
            raise ConfigError("an in-memory SQLite database cannot be shared between actor threads")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(
            path,
            field_types=SQLITE_FIELD_TYPES,
            pragmas={"journal_mode": "wal", "synchronous": "full", "busy_timeout": 30000,
                     "foreign_keys": 1},
            timeout=30,
        )
    if parsed.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        params = mysql_params(url)
        return WalletMySQLDatabase(
            params.pop("database") or "information_schema",  # server-level URL (create/drop)
            **params,
            charset="utf8mb4",
            init_command=f"SET sql_mode='{MYSQL_SQL_MODE}', time_zone='+00:00'",
            field_types=MYSQL_FIELD_TYPES,
            max_connections=max_connections,
            timeout=DB_POOL_WAIT_S,
            stale_timeout=300,
            connect_timeout=int(query.get("connect_timeout", 10)),
        )
    raise ConfigError(f"unsupported database URL scheme {parsed.scheme!r}: use sqlite:/// or mysql://")


def connect_database(url: str, max_connections: int = DB_POOL_MAX_CONNECTIONS) -> peewee.Database:
    """Create the database for `url` and bind every model to it (one binding per process)."""
    db = make_database(url, max_connections)
    database_proxy.initialize(db)
    return db


def migrate(db: peewee.Database) -> list[str]:
    """Apply pending migrations in order; returns the names applied."""
    runner = Runner(db, directory=str(MIGRATIONS_DIR))
    applied = runner.up()
    for name in applied or ():
        log.info("migration applied", extra={"migration": name})
    return list(applied or ())


def create_mysql_database(url: str) -> None:
    """Create the database named in a MySQL URL if it does not exist (for init and tests)."""
    parsed = urlparse(url)
    name = (parsed.path or "/").lstrip("/")
    server = make_database(url.replace(parsed.path, "/", 1) if name else url)
    with server.connection_context():
        server.execute_sql(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    server.close_all()


def drop_mysql_database(url: str) -> None:
    parsed = urlparse(url)
    name = (parsed.path or "/").lstrip("/")
    server = make_database(url.replace(parsed.path, "/", 1))
    with server.connection_context():
        server.execute_sql(f"DROP DATABASE IF EXISTS `{name}`")
    server.close_all()
