"""Provisioning, in one function: everything a database needs before an actor system may start on it.

Used by `wallet init`, the demo, the tests and the benchmarks, so the sequence exists once: the schema
(migrations), every shard's system accounts (world, fees, transit, escrow), and the deposit address pool
topped up to a number of unassigned keys. Idempotent: running it again changes nothing that is there.
"""

from __future__ import annotations

import dataclasses

import peewee

from core.keys import KeyRing
from ledger.accounts import ensure_system_accounts
from storage.db import migrate
from storage.pool import generate_pool, pool_counts


@dataclasses.dataclass(frozen=True)
class Provisioned:
    migrations_applied: tuple[str, ...]
    keys_generated: int
    pool_unassigned: int


def provision(db: peewee.Database, shards: int, pool_unassigned: int = 0, key_ring: KeyRing | None = None,
              progress: bool = False) -> Provisioned:
    """Bring the database bound to the models (storage.db.connect_database) up to date for `shards`
    shards, with at least `pool_unassigned` unassigned deposit keys (encrypted under `key_ring`)."""
    applied = migrate(db)
    ensure_system_accounts(shards)
    total, assigned = pool_counts()
    missing = max(0, pool_unassigned - (total - assigned))
    if missing:
        if key_ring is None:
            raise ValueError("generating deposit keys needs the master key")
        generate_pool(db, key_ring, missing, progress=progress)
    return Provisioned(tuple(applied), missing, total - assigned + missing)
