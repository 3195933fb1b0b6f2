"""The service's own keys: the hot wallet (withdrawals) and the gas wallet (gas for token sweeps), one row per
purpose, sealed like the pool's keys (core/keys.py envelopes). Written once by provisioning; only the signer
opens them.

A frozen copy of the table as it was at this migration, independent of storage/models.py.
"""

import peewee


def up(migrator, db):
    class WalletKey(peewee.Model):
        id = peewee.BigAutoField()
        purpose = peewee.CharField(max_length=16, unique=True)  # hot | gas
        address = peewee.CharField(max_length=42, unique=True)
        ciphertext = peewee.BlobField()
        wrapped_data_key = peewee.BlobField()
        master_version = peewee.SmallIntegerField()
        created_at = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = "wallet_key"

    db.create_tables([WalletKey])
