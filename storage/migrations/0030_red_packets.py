"""Red packets: the packets a shard escrows for their senders, and their claims (one per account and packet).

A frozen copy of the tables as they were at this migration, independent of storage/models.py.
"""

import peewee

from storage.fields import AmountField


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class RedPacket(Base):
        id = peewee.CharField(max_length=32, primary_key=True)
        shard = peewee.SmallIntegerField()
        code = peewee.CharField(max_length=64, unique=True)
        sender_account = peewee.BigIntegerField()
        asset = peewee.CharField(max_length=16)
        total = AmountField()
        shares = peewee.IntegerField()
        mode = peewee.CharField(max_length=8)
        remaining = AmountField()
        shares_left = peewee.IntegerField()
        refunded = AmountField()
        status = peewee.CharField(max_length=16)
        created_at = peewee.BigIntegerField()
        expires_at = peewee.BigIntegerField()
        closed_at = peewee.BigIntegerField(null=True)
        create_op_id = peewee.CharField(max_length=100, unique=True)

        class Meta:
            table_name = "red_packet"
            indexes = ((("shard", "status"), False), (("sender_account", "created_at"), False))

    class RedPacketClaim(Base):
        red_packet_id = peewee.CharField(max_length=32)
        account_id = peewee.BigIntegerField()
        amount = AmountField()
        position = peewee.IntegerField()
        op_id = peewee.CharField(max_length=100)
        claimed_at = peewee.BigIntegerField()

        class Meta:
            table_name = "red_packet_claim"
            primary_key = peewee.CompositeKey("red_packet_id", "account_id")

    db.create_tables([RedPacket, RedPacketClaim])
