"""BlockWatch's tables: the chain cursor, the history of blocks read (to detect reorgs), and deposits.

A frozen copy of the tables as they were at this migration, independent of storage/models.py.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class ChainCursor(Base):
        chain_id = peewee.BigIntegerField(primary_key=True)
        height = peewee.BigIntegerField()
        block_hash = peewee.CharField(max_length=66, null=True)
        start_height = peewee.BigIntegerField()
        updated_at = peewee.BigIntegerField()

    class ChainBlock(Base):
        id = peewee.BigAutoField()
        chain_id = peewee.BigIntegerField()
        number = peewee.BigIntegerField()
        block_hash = peewee.CharField(max_length=66)
        parent_hash = peewee.CharField(max_length=66)
        orphaned = peewee.BooleanField(default=False)
        seen_at = peewee.BigIntegerField()

        class Meta:
            indexes = ((("chain_id", "block_hash"), True), (("chain_id", "number"), False))

    class Deposit(Base):
        id = peewee.BigAutoField()
        chain_id = peewee.BigIntegerField()
        tx_hash = peewee.CharField(max_length=66)
        log_index = peewee.IntegerField()
        account_id = peewee.BigIntegerField()
        address = peewee.CharField(max_length=42)
        asset = peewee.CharField(max_length=16)
        amount = AmountField()
        block_number = peewee.BigIntegerField()
        block_hash = peewee.CharField(max_length=66)
        status = peewee.CharField(max_length=24)
        credited_op_id = peewee.CharField(max_length=100, null=True)
        held_at = peewee.BigIntegerField(null=True)
        created_at = peewee.BigIntegerField()
        updated_at = peewee.BigIntegerField()

        class Meta:
            indexes = (
                (("chain_id", "tx_hash", "log_index"), True),
                (("account_id", "id"), False),
                (("status", "block_number"), False),
            )

    db.create_tables([ChainCursor, ChainBlock, Deposit])
