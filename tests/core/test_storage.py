"""Storage basics on both backends: the schema comes from migrations (applied once), and text is utf8mb4."""

from __future__ import annotations

from storage.db import connect_database, migrate
from storage.models import Account


def test_migrations_apply_once(empty_db_url):
    db = connect_database(empty_db_url)
    first = migrate(db)
    assert first and first == sorted(first)  # every migration, in order
    assert migrate(db) == []  # a second run finds nothing to do
    assert {"account", "pool_key", "balance", "operation", "posting", "outbox"} <= set(db.get_tables())
    db.close()


def test_text_round_trips_as_utf8mb4(ledger_env):
    name = "zoë-\u4e2d\u6587-\U0001f680"  # 4-byte characters need utf8mb4 on MariaDB
    registered = ledger_env.open_account(name)
    assert Account.get_by_id(registered.account_id).username == name
