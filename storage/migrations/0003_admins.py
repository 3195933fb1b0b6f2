"""Operator identities (`wallet admin create`): name, role and the hash of a one-time API token.

A frozen copy of the table as it was at this migration, independent of storage/models.py.
"""

import peewee


def up(migrator, db):
    class AdminUser(peewee.Model):
        id = peewee.BigAutoField()
        name = peewee.CharField(max_length=64, unique=True)
        role = peewee.CharField(max_length=16)
        token_hash = peewee.CharField(max_length=64, unique=True)
        created_at = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "admin_user"

    db.create_tables([AdminUser])
