"""Shared by the bench scripts: a throwaway MariaDB database, bulk-created accounts, the machine's facts.

The scripts run as `python bench/<name>.py`, so this directory is on sys.path and `import common` works.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import uuid
from typing import Iterator

import peewee

from app.provision import provision
from storage import sql
from storage.db import connect_database, create_mysql_database, drop_mysql_database, migrate
from storage.models import Account, now_ms

MYSQL_SERVER = os.environ.get("WALLET_BENCH_MYSQL", "mysql://root:@127.0.0.1:3306")
MASTER_KEY = bytes.fromhex("22" * 32)  # a throwaway key: bench databases are dropped at the end


@contextlib.contextmanager
def bench_database(keep: bool = False) -> Iterator[str]:
    """A fresh, migrated MariaDB database for one run, dropped afterwards (unless `keep`)."""
    url = f"{MYSQL_SERVER}/wallet_bench_{uuid.uuid4().hex[:10]}"
    create_mysql_database(url)
    try:
        db = connect_database(url)
        migrate(db)
        db.close_all()
        yield url
    finally:
        if not keep:
            drop_mysql_database(url)


def create_accounts(db: peewee.Database, count: int, shards: int, prefix: str = "bench") -> list[tuple[int, int]]:
    """Insert `count` user accounts round-robin over the shards, plus the shards' system accounts.

    Registration (the allocator) is not what is measured, so rows go in with one multi-row INSERT per
    chunk. Returns [(account_id, shard)] in id order.
    """
    provision(db, shards)
    now = now_ms()
    rows = [(f"{prefix}-{i}", "user", i % shards, 0, now) for i in range(count)]
    with db.atomic():
        sql.insert_many(db, "account", ("username", "kind", "shard", "on_hold", "created_at"), rows)
    query = Account.select(Account.id, Account.shard).where(
        (Account.kind == "user") & Account.username.startswith(f"{prefix}-")).order_by(Account.id)
    return list(query.tuples())


def server_facts(db: peewee.Database) -> dict[str, str]:
    """What a figure depends on: the database server and its durability settings."""
    facts = {"mariadb": db.execute_sql("SELECT VERSION()").fetchone()[0]}
    for name in ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin", "innodb_buffer_pool_size",
                 "innodb_doublewrite", "innodb_flush_method"):
        row = db.execute_sql("SHOW VARIABLES LIKE %s", (name,)).fetchone()
        facts[name] = row[1] if row else "?"
    return facts


def machine_facts() -> dict[str, str]:
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {"nproc": str(os.cpu_count()), "memory_gib": f"{mem_kb / 2**20:.1f}", "python": platform.python_version(),
            "load": load_average()}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def finish_report(report: dict, json_path: str | None) -> None:
    """End a run: the load after it and the server and machine facts printed under the figures, and the whole
    report written to `json_path` if one was given."""
    report["uptime_after"] = uptime()
    print(f"server: {report['server']}")
    print(f"machine: {report['machine']}; {report['uptime_after']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def mariadb_cpu_s() -> float | None:
    """CPU seconds used so far by the local mariadbd (None if it is not visible from here)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() not in ("mariadbd", "mysqld"):
                    continue
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return None


class CpuMeter:
    """CPU seconds of this process and of mariadbd over a stretch of wall time."""

    def __enter__(self) -> CpuMeter:
        self._usage, self._db = resource.getrusage(resource.RUSAGE_SELF), mariadb_cpu_s()
        self.python_s = self.python_sys_s = self.mariadb_s = 0.0
        self.context_switches = 0
        return self

    def __exit__(self, *exc: object) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.python_s = (usage.ru_utime + usage.ru_stime) - (self._usage.ru_utime + self._usage.ru_stime)
        self.python_sys_s = usage.ru_stime - self._usage.ru_stime
        self.context_switches = (usage.ru_nvcsw + usage.ru_nivcsw) - (self._usage.ru_nvcsw + self._usage.ru_nivcsw)
        db = mariadb_cpu_s()
        self.mariadb_s = (db - self._db) if db is not None and self._db is not None else float("nan")

    def per_item_us(self, items: int) -> dict[str, float]:
        n = max(items, 1)
        return {"python_cpu_us_per_transfer": round(self.python_s / n * 1e6, 1),
                "python_sys_us_per_transfer": round(self.python_sys_s / n * 1e6, 1),
                "context_switches_per_transfer": round(self.context_switches / n, 2),
                "mariadb_cpu_us_per_transfer": round(self.mariadb_s / n * 1e6, 1)}


def provision_wallet(url: str, shards: int, pool: int = 0) -> None:
    """What `wallet init` does (schema, system accounts, the hot and gas wallet keys), under MASTER_KEY."""
    from app.provision import provision
    from core.keys import KeyRing

    db = connect_database(url)
    provision(db, shards, pool, KeyRing.single(MASTER_KEY))
    db.close_all()
