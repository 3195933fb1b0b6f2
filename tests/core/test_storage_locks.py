"""Shards commit at the same time on one MariaDB: their transactions must not deadlock each other. The
pattern is the shard's own (insert outbox rows, mark earlier ones delivered by op id) on a small table,
where InnoDB's default REPEATABLE READ scans and locks other shards' rows and deadlocks within a few
rounds; the service's connections run READ COMMITTED."""

from __future__ import annotations

import concurrent.futures

import peewee

from storage.db import make_database, migrate
from storage.models import now_ms

SHARDS = 4
ROUNDS = 6
ROWS = 20
REPEATS = 3


def shard_writes(db: peewee.Database, shard: int, repeat: int) -> int:
    """Returns the number of deadlocks met."""
    deadlocks = 0
    previous: list[str] = []
    db.connect(reuse_if_open=True)
    try:
        for n in range(ROUNDS):
            ops = [f"x:{repeat}:{shard}:{n}:{i}" for i in range(ROWS)]
            try:
                with db.atomic():
                    db.cursor().executemany(
                        "INSERT INTO outbox (op_id, source_op_id, source_shard, target_shard, payload, created_at) "
                        "VALUES (%s, %s, %s, %s, '{}', %s)", [(op, op[2:], shard, 0, now_ms()) for op in ops])
                    if previous:
                        db.execute_sql("UPDATE outbox SET delivered_at = %s WHERE delivered_at IS NULL AND op_id IN ("
                                       + ", ".join(["%s"] * len(previous)) + ")", [now_ms(), *previous])
            except peewee.OperationalError as exc:
                if exc.args[0] != 1213:
                    raise
                deadlocks += 1
            previous = ops
    finally:
        db.close()
    return deadlocks


def test_shards_committing_together_do_not_deadlock(mysql_url):
    db = make_database(mysql_url)
    migrate(db)
    assert db.execute_sql("SELECT @@tx_isolation").fetchone() == ("READ-COMMITTED",)
    db.close()
    deadlocks = 0
    for repeat in range(REPEATS):
        db.execute_sql("DELETE FROM outbox")  # small tables are where scans (and their locks) happen
        with concurrent.futures.ThreadPoolExecutor(SHARDS) as pool:
            deadlocks += sum(pool.map(lambda s: shard_writes(db, s, repeat), range(SHARDS)))
    db.close_all()
    assert deadlocks == 0
