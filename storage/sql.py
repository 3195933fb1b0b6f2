"""Raw SQL for the hot path (a shard's batch write), where peewee's query builder costs more than the
database. Everything else uses the models."""

from __future__ import annotations

from typing import Any, Sequence

import peewee


def is_mysql(db: peewee.Database) -> bool:
    return isinstance(db, peewee.MySQLDatabase)


def insert_many(db: peewee.Database, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                chunk: int = 1000) -> None:
    if not rows:
        return
    placeholders = "(" + ", ".join([db.param] * len(columns)) + ")"
    cols = ", ".join(columns)
    if is_mysql(db):
        # PyMySQL rewrites an INSERT ... VALUES executemany into multi-row statements itself.
        sql = f"INSERT INTO {table} ({cols}) VALUES {placeholders}"
        for start in range(0, len(rows), chunk):
            db.cursor().executemany(sql, rows[start:start + chunk])
        return
    sql = f"INSERT INTO {table} ({cols}) VALUES {placeholders}"
    db.cursor().executemany(sql, rows)


def upsert_balances(db: peewee.Database, rows: Sequence[tuple[int, str, str, str]]) -> None:
    """rows: (account_id, asset, available, frozen) with amounts as digit strings."""
    if not rows:
        return
    p = db.param
    if is_mysql(db):
        sql = (f"INSERT INTO balance (account_id, asset, available, frozen) VALUES ({p}, {p}, {p}, {p}) "
               "ON DUPLICATE KEY UPDATE available = VALUES(available), frozen = VALUES(frozen)")
    else:
        sql = (f"INSERT INTO balance (account_id, asset, available, frozen) VALUES ({p}, {p}, {p}, {p}) "
               "ON CONFLICT (account_id, asset) DO UPDATE SET available = excluded.available, "
               "frozen = excluded.frozen")
    for start in range(0, len(rows), 1000):
        db.cursor().executemany(sql, rows[start:start + 1000])


def select_in(db: peewee.Database, sql_prefix: str, values: Sequence[Any], chunk: int = 500) -> list[tuple]:
    """Run `sql_prefix IN (...)` over `values` in bounded chunks and return all rows."""
    out: list[tuple] = []
    for start in range(0, len(values), chunk):
        part = values[start:start + chunk]
        sql = f"{sql_prefix} IN ({', '.join([db.param] * len(part))})"
        out.extend(db.execute_sql(sql, part).fetchall())
    return out
