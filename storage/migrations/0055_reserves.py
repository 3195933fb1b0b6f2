"""Reconciliation snapshots and proof-of-reserves snapshots (treasury/reconcile.py, treasury/reserves.py):

- reconciliation: one row per run, at one block height; the per-asset lines as JSON (amounts as strings)
  and whether any asset drifted. Reports, not money: nothing is posted from them.
- reserve_secret: the server secret the per-user salts are derived from (HMAC), sealed with the key ring
  like a private key (core/keys.py envelope, purpose "reserves").
- reserve_snapshot / reserve_leaf: a Merkle-sum tree's root and total per asset, and the balances it was
  built from (a user's proof is rebuilt from them; the salts are derived, never stored).

A frozen copy of the tables as they were at this migration, independent of storage/models.py.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Reconciliation(Base):
        id = peewee.BigAutoField()
        block_number = peewee.BigIntegerField()
        block_hash = peewee.CharField(max_length=66)
        clean = peewee.BooleanField()
        lines = peewee.TextField()
        trigger = peewee.CharField(max_length=16)
        created_at = peewee.BigIntegerField(index=True)

        class Meta:
            table_name = "reconciliation"

    class ReserveSecret(Base):
        id = peewee.SmallIntegerField(primary_key=True)
        ciphertext = peewee.BlobField()
        wrapped_data_key = peewee.BlobField()
        master_version = peewee.SmallIntegerField()
        created_at = peewee.BigIntegerField()

        class Meta:
            table_name = "reserve_secret"

    class ReserveSnapshot(Base):
        id = peewee.BigAutoField()
        asset = peewee.CharField(max_length=16)
        block_number = peewee.BigIntegerField(null=True)
        root = peewee.CharField(max_length=64)
        total = AmountField()
        leaf_count = peewee.IntegerField()
        created_at = peewee.BigIntegerField()

        class Meta:
            table_name = "reserve_snapshot"
            indexes = ((("asset", "id"), False),)

    class ReserveLeaf(Base):
        snapshot_id = peewee.BigIntegerField()
        position = peewee.IntegerField()
        account_id = peewee.BigIntegerField()
        balance = AmountField()

        class Meta:
            table_name = "reserve_leaf"
            primary_key = peewee.CompositeKey("snapshot_id", "position")
            indexes = ((("snapshot_id", "account_id"), True),)

    db.create_tables([Reconciliation, ReserveSecret, ReserveSnapshot, ReserveLeaf])
