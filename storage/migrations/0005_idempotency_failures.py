"""The HTTP front's record of money requests refused for a business reason, by (account, Idempotency-Key),
so that a retry under the same key gets the same answer (web/idempotency.py).

A frozen copy of the table as it was at this migration, independent of web/models.py.
"""

import peewee


def up(migrator, db):
    class IdempotencyFailure(peewee.Model):
        account_id = peewee.BigIntegerField()
        key_hash = peewee.CharField(max_length=64)
        fingerprint = peewee.CharField(max_length=64)
        status = peewee.SmallIntegerField()
        problem = peewee.TextField()
        created_at = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "idempotency_failure"
            primary_key = peewee.CompositeKey("account_id", "key_hash")

    db.create_tables([IdempotencyFailure])
