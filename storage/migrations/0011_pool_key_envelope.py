"""Envelope encryption of the pool's keys (core/keys.py): each key's data key, wrapped under the master key
version in key_version. NULL marks a row of the legacy single layer (the key encrypted directly under the
master key), still readable; `wallet keys rotate` converts it."""

import peewee


def up(migrator, db):
    migrator.migrate(migrator.add_column("pool_key", "wrapped_data_key", peewee.BlobField(null=True)))
