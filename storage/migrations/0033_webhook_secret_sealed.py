"""Webhook signing secrets sealed at rest: `secret_sealed` (nonce || AES-GCM under the master key, associated
data "webhook-secret:<id>:<url>", storage/sealed_secrets.py) and the master key's version beside it. The plaintext
column `secret` becomes nullable: it is NULL for every row sealed since, and a row still holding a plaintext
secret from before this migration is sealed (and its plaintext cleared, in the same UPDATE) by the first start
of the service or `wallet keys rotate` with the master key, since a migration has no key ring.

A frozen copy of the columns as they were at this migration, independent of storage/webhooks.py.
"""

import peewee


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("webhook_endpoint", "secret_sealed", peewee.BlobField(null=True)),
        migrator.add_column("webhook_endpoint", "secret_key_version", peewee.SmallIntegerField(null=True)),
        migrator.drop_not_null("webhook_endpoint", "secret"),
    )
