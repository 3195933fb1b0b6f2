"""One actor system per database.

Every shard keeps its accounts' balances in memory and writes them back whole, so two processes running
shard N on the same database would each spend the same money (a double spend the audit only sees
afterwards). The lifecycle therefore takes an exclusive lock on the database before any actor starts,
and holds it until the last actor has stopped:

- MariaDB/MySQL: `GET_LOCK` on a dedicated connection outside the pool. The server drops the lock the
  moment that connection closes, so a process killed with SIGKILL never leaves a stale lock behind.
- SQLite: `flock` on a file beside the database; the kernel drops it when the process dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from pathlib import Path
from typing import IO

import pymysql

from storage.db import mysql_params, sqlite_path
from core.errors import WalletError

log = logging.getLogger(__name__)


class SystemAlreadyRunning(WalletError):
    code = "system_already_running"
    status = 503


class SystemLock:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: pymysql.connections.Connection | None = None
        self._file: IO[str] | None = None

    def acquire(self) -> SystemLock:
        if self.url.startswith("sqlite"):
            self._acquire_file()
        else:
            self._acquire_mysql()
        return self

    def _acquire_file(self) -> None:
        path = Path(sqlite_path(self.url) + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SystemAlreadyRunning(f"another wallet process holds {path}") from None
        self._file = handle

    def _acquire_mysql(self) -> None:
        params = mysql_params(self.url)
        database = params["database"]
        conn = pymysql.connect(**params, connect_timeout=10, autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", (self._mysql_lock_name(database),))
            (got,) = cursor.fetchone()
        if got != 1:
            conn.close()
            raise SystemAlreadyRunning(f"another wallet process is running on database {database!r}")
        self._conn = conn

    @staticmethod
    def _mysql_lock_name(database: str) -> str:
        # Lock names are server-wide and at most 64 characters.
        return "wallet-system:" + hashlib.sha256(database.encode()).hexdigest()[:40]

    def check(self) -> bool:
        """Still held? (A MySQL lock dies with its connection, e.g. after a server-side timeout.)"""
        if self._file is not None:
            return True
        return _alive(self._conn)

    def release(self) -> None:
        self._conn = _close(self._conn)
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class NamedLock:
    """A server-wide MariaDB/MySQL lock by name (GET_LOCK) on a connection of its own, outside the pool
    (cluster mode: one process migrates at a time; one host owns a shard). Dropped by the server the moment
    the connection closes, so a dead holder never leaves it behind."""

    def __init__(self, url: str, name: str) -> None:
        if url.startswith("sqlite"):
            raise WalletError("cluster mode needs MariaDB/MySQL (WALLET_DATABASE_URL)")
        self.url = url
        database = mysql_params(url)["database"]
        self.name = f"wallet-{name}:" + hashlib.sha256(database.encode()).hexdigest()[:32]
        assert len(self.name) <= 64, self.name
        self._conn: pymysql.connections.Connection | None = None
        self.connection_id: int | None = None

    def acquire(self, wait_s: float) -> bool:
        conn = pymysql.connect(**mysql_params(self.url), connect_timeout=10, autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, %s), CONNECTION_ID()", (self.name, max(0, int(wait_s))))
            got, connection_id = cursor.fetchone()
        if got != 1:
            conn.close()
            return False
        self._conn, self.connection_id = conn, connection_id
        return True

    def check(self) -> bool:
        return _alive(self._conn)

    def release(self) -> None:
        self._conn = _close(self._conn)


def _alive(conn: pymysql.connections.Connection | None) -> bool:
    """A GET_LOCK lives as long as its connection: still answering, still held."""
    if conn is None:
        return False
    try:
        conn.ping(reconnect=False)
        return True
    except pymysql.MySQLError:
        return False


def _close(conn: pymysql.connections.Connection | None) -> None:
    """Closing the session releases its GET_LOCK. Returns None, the connection's new value."""
    if conn is not None:
        try:
            conn.close()
        except pymysql.MySQLError:
            log.debug("closing the lock connection failed", exc_info=True)
    return None
