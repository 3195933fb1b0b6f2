"""Account security, the front's tables: one-time recovery codes (SHA-256 of each; shown once at registration)
and a TOTP second factor per account (the secret sealed with AES-GCM under the master key).

A frozen copy of the tables as they were at this migration, independent of web/models.py.
"""

import peewee


def up(migrator, db):
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class RecoveryCode(Base):
        account_id = peewee.BigIntegerField()
        code_hash = peewee.CharField(max_length=64)
        created_at = peewee.BigIntegerField()
        used_at = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = "web_recovery_code"
            primary_key = peewee.CompositeKey("account_id", "code_hash")

    class TotpFactor(Base):
        account_id = peewee.BigIntegerField(primary_key=True)
        ciphertext = peewee.BlobField()
        key_version = peewee.SmallIntegerField()
        created_at = peewee.BigIntegerField()
        confirmed_at = peewee.BigIntegerField(null=True)
        last_step = peewee.BigIntegerField()

        class Meta:
            table_name = "web_totp"

    db.create_tables([RecoveryCode, TotpFactor])
