"""The money core: accounts, address pool, balances, operations, journal postings, outbox.

A frozen copy of the tables as they were at this migration, deliberately independent of
storage/models.py so that later model changes never change what this step creates.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Account(Base):
        id = peewee.BigAutoField()
        username = peewee.CharField(max_length=64, unique=True)
        kind = peewee.CharField(max_length=8)
        shard = peewee.SmallIntegerField(index=True)
        password_hash = peewee.CharField(max_length=255, null=True)
        pay_password_hash = peewee.CharField(max_length=255, null=True)
        deposit_address = peewee.CharField(max_length=42, unique=True, null=True)
        on_hold = peewee.BooleanField(default=False)
        hold_reason = peewee.CharField(max_length=255, null=True)
        created_at = peewee.BigIntegerField()

    class PoolKey(Base):
        id = peewee.BigAutoField()
        address = peewee.CharField(max_length=42, unique=True)
        encrypted_key = peewee.BlobField()
        key_version = peewee.SmallIntegerField()
        account_id = peewee.BigIntegerField(null=True, unique=True)
        created_at = peewee.BigIntegerField()
        assigned_at = peewee.BigIntegerField(null=True)

    class Balance(Base):
        account_id = peewee.BigIntegerField()
        asset = peewee.CharField(max_length=16)
        available = AmountField()
        frozen = AmountField()

        class Meta:
            primary_key = peewee.CompositeKey("account_id", "asset")

    class Operation(Base):
        op_id = peewee.CharField(max_length=100, primary_key=True)
        shard = peewee.SmallIntegerField()
        kind = peewee.CharField(max_length=24)
        account_id = peewee.BigIntegerField(index=True)
        fingerprint = peewee.CharField(max_length=64)
        result = peewee.TextField()
        created_at = peewee.BigIntegerField()

    class Posting(Base):
        id = peewee.BigAutoField()
        op_id = peewee.CharField(max_length=100)
        leg = peewee.SmallIntegerField()
        shard = peewee.SmallIntegerField()
        asset = peewee.CharField(max_length=16)
        debit_account = peewee.BigIntegerField(index=True)
        debit_bucket = peewee.CharField(max_length=1)
        credit_account = peewee.BigIntegerField(index=True)
        credit_bucket = peewee.CharField(max_length=1)
        amount = AmountField()
        created_at = peewee.BigIntegerField()

        class Meta:
            indexes = ((("op_id", "leg"), True),)

    class Outbox(Base):
        id = peewee.BigAutoField()
        op_id = peewee.CharField(max_length=100, unique=True)
        source_op_id = peewee.CharField(max_length=100)
        source_shard = peewee.SmallIntegerField()
        target_shard = peewee.SmallIntegerField()
        payload = peewee.TextField()
        created_at = peewee.BigIntegerField()
        delivered_at = peewee.BigIntegerField(null=True)

        class Meta:
            indexes = ((("source_shard", "delivered_at"), False),)

    db.create_tables([Account, PoolKey, Balance, Operation, Posting, Outbox])
