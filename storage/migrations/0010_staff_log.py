"""The staff log: every staff action as a row carrying the SHA-256 of the row before (storage/stafflog.py),
and a one-row head that serialises appends (its UPDATE is the lock) and names the last hash.

A frozen copy of the tables as they were at this migration, independent of storage/models.py.
"""

import peewee

GENESIS_HASH = "0" * 64


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class StaffAction(Base):
        id = peewee.BigIntegerField(primary_key=True)  # 1, 2, 3, ... with no gap: the chain's order
        at_ms = peewee.BigIntegerField()
        admin_id = peewee.BigIntegerField(null=True)  # None: the service itself (e.g. an automatic approval)
        admin_name = peewee.CharField(max_length=64)
        role = peewee.CharField(max_length=16)
        action = peewee.CharField(max_length=48)
        subject = peewee.CharField(max_length=128)
        details = peewee.TextField()
        prev_hash = peewee.CharField(max_length=64)
        row_hash = peewee.CharField(max_length=64)

        class Meta:
            table_name = "staff_action"
            indexes = ((("subject", "id"), False), (("admin_id", "id"), False))

    class StaffLogHead(Base):
        id = peewee.SmallIntegerField(primary_key=True)
        last_id = peewee.BigIntegerField()
        last_hash = peewee.CharField(max_length=64)

        class Meta:
            table_name = "staff_log_head"

    db.create_tables([StaffAction, StaffLogHead])
    StaffLogHead.insert(id=1, last_id=0, last_hash=GENESIS_HASH).execute()
