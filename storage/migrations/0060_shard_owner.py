"""Cluster mode's fence (DESIGN.md "Cluster mode"): one row per shard ("shard-3") and per singleton. A host
that takes the database lock of a shard increments its epoch; every batch transaction of the shard first
runs `UPDATE shard_owner SET batches = batches + 1 WHERE name = ? AND epoch = ?mine`, so a host that lost its
lock while paused (GC, SIGSTOP) commits nothing once another has taken over.

A frozen copy of the table as it was at this migration, independent of storage/fence.py.
"""

import peewee


def up(migrator, db):
    class ShardOwner(peewee.Model):
        name = peewee.CharField(max_length=32, primary_key=True)
        epoch = peewee.BigIntegerField(default=0)
        batches = peewee.BigIntegerField(default=0)
        owner = peewee.CharField(max_length=255, default="")
        updated_at_ms = peewee.BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "shard_owner"

    db.create_tables([ShardOwner])
