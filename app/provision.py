"""Provisioning, in one function: everything a database needs before an actor system may start on it.

Used by `wallet init`, the demo, the tests and the benchmarks, so the sequence exists once: the schema
(migrations), every shard's system accounts (world, fees, transit, escrow), the deposit address pool
topped up to a number of unassigned keys, and (given the master keys) the hot and gas wallets' keys.
Idempotent: running it again changes nothing that is there.
"""

from __future__ import annotations

import dataclasses

import peewee

from core.keys import KeyRing
from ledger.accounts import ensure_system_accounts
from storage.db import migrate
from storage.pool import generate_pool, pool_counts
from storage.walletkeys import ensure_wallet_keys


@dataclasses.dataclass(frozen=True)
class Provisioned:
    migrations_applied: tuple[str, ...]
    keys_generated: int
    pool_unassigned: int
    wallet_keys: dict[str, str] = dataclasses.field(default_factory=dict)  # purpose -> address; {} without a ring


def provision(db: peewee.Database, shards: int, pool_unassigned: int = 0, key_ring: KeyRing | None = None,
              progress: bool = False) -> Provisioned:
    """Bring the database bound to the models (storage.db.connect_database) up to date for `shards`
    shards, with at least `pool_unassigned` unassigned deposit keys (sealed under `key_ring`), and with the hot
    and gas wallets' keys if `key_ring` is given (a wrong ring for existing ones is a ConfigError)."""
    applied = migrate(db)
    ensure_system_accounts(shards)
    # first: a ring that does not open the existing wallet keys stops here, before any key is sealed under it
    wallets = ensure_wallet_keys(db, key_ring) if key_ring is not None else {}
    total, assigned = pool_counts()
    missing = max(0, pool_unassigned - (total - assigned))
    if missing:
        if key_ring is None:
            raise ValueError("generating deposit keys needs the master key")
        generate_pool(db, key_ring, missing, progress=progress)
    return Provisioned(tuple(applied), missing, total - assigned + missing, wallets)
