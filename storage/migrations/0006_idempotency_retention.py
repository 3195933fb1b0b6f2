"""Refusal records expire (web/idempotency.py): the front loads only recent ones and purges the old ones
by creation time, so created_at gets an index."""


def up(migrator, db):
    migrator.migrate(migrator.add_index("idempotency_failure", ("created_at",), False))

