"""The HTTP front's tables: login sessions (hashed bearer tokens with expiry and revocation).

A frozen copy of the table as it was at this migration, independent of web/models.py.
"""

import peewee


def up(migrator, db):
    class WebSession(peewee.Model):
        token_hash = peewee.CharField(max_length=64, primary_key=True)
        account_id = peewee.BigIntegerField(index=True)
        created_at = peewee.BigIntegerField()
        expires_at = peewee.BigIntegerField()
        revoked_at = peewee.BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "web_session"

    db.create_tables([WebSession])
