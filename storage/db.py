"""Bind the models to one database chosen by URL: MariaDB/MySQL (pooled) or SQLite (embedded).

MySQL connections come from mysqlclient (MySQLdb), the C driver over libmariadb: a shard's batch write is a
handful of statements, and with PyMySQL (pure Python) reading their answers was the largest part of the
shard's time (docs/BENCHMARKS.md). It also lets go of the GIL for the whole round trip. PyMySQL stays for
the few dedicated lock connections (storage/locks.py) and as the tests' independent client.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import MySQLdb.connections
import peewee
from playhouse.migrations import Runner
from playhouse.pool import PooledMySQLDatabase

from core.errors import ConfigError
from core.limits import DB_POOL_MAX_CONNECTIONS, DB_POOL_PING_IDLE_MS, DB_POOL_WAIT_S

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


class TrackedConnection(MySQLdb.connections.Connection):
    """A MySQLdb connection that knows whether it is inside a transaction it began. MySQLdb does not show
    the server's status flags, and without this the pool would roll back on every check-in: a round trip
    under its one lock. It errs one way only: open from the moment BEGIN is sent until a COMMIT or ROLLBACK
    has succeeded (a failed COMMIT leaves it open, so the pool rolls back)."""

    in_transaction = False

    def query(self, query: bytes | bytearray) -> None:
        head = bytes(query[:20]).lstrip().upper()
        if head.startswith((b"BEGIN", b"START TRANSACTION")):
            self.in_transaction = True
            super().query(query)
        elif head.startswith((b"COMMIT", b"ROLLBACK")) and not head.startswith(b"ROLLBACK TO"):
            super().query(query)
            self.in_transaction = False
        else:
            super().query(query)

    def rollback(self) -> None:
        super().rollback()
        self.in_transaction = False

    def transaction_ended(self) -> None:
        """A script that began with BEGIN and ended with COMMIT succeeded (storage/sql.transaction_script)."""
        self.in_transaction = False


class _ReadCommittedMySQLDatabase(peewee.MySQLDatabase):
    """Every new connection reads committed data. Under InnoDB's default REPEATABLE READ, a shard's
    `UPDATE outbox ... WHERE op_id IN (...)` that the optimizer runs as a scan (a small table) takes
    next-key locks on other shards' rows, and two shards committing at once deadlock (error 1213): a
    spurious CommitFailed. Each row has one writer, so nothing here needs gap locks."""

    def _connect(self):
        # MySQLdb, not the PyMySQL peewee would pick: see the module docstring
        conn = TrackedConnection(database=self.database, autocommit=True, **self.connect_params)
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn


class WalletMySQLDatabase(PooledMySQLDatabase, _ReadCommittedMySQLDatabase):
    """Pooled (one connection per actor thread), strict and READ COMMITTED. A connection that came back
    within DB_POOL_PING_IDLE_MS goes out again unpinged (see core/limits.py)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._checked_in_ms: dict[int, int] = {}  # conn_key -> when it came back (under the pool's lock)

    def _is_closed(self, conn) -> bool:
        returned = self._checked_in_ms.pop(self.conn_key(conn), None)
        if returned is not None and _monotonic_ms() - returned < DB_POOL_PING_IDLE_MS:
            return not conn.open
        try:
            conn.ping()  # MySQLdb never reconnects here (that would drop the session's settings)
        except MySQLdb.Error:
            return True
        return False

    def _can_reuse(self, conn) -> bool:
        """peewee's pool rolls back on every check-in when the driver cannot tell: a round trip under the
        database's one lock. Roll back only what is really open (TrackedConnection)."""
        if not conn.in_transaction:
            return True
        return super()._can_reuse(conn)

    def _close(self, conn, close_conn: bool = False) -> None:
        with self._pool_lock:  # re-entrant: the pool's own _close takes it too
            super()._close(conn, close_conn)
            if close_conn:
                self._checked_in_ms.pop(self.conn_key(conn), None)
            else:
                self._checked_in_ms[self.conn_key(conn)] = _monotonic_ms()


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000




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
