"""Helpers shared by tests: start a system with a pool, register accounts, fund them."""

from __future__ import annotations

import itertools

from actors import messages as m
from wallet.keys import KeyRing
from wallet.pool import generate_pool
from wallet.system import ActorSystem

_ids = itertools.count()


def start_system(config, pool: int = 50) -> ActorSystem:
    from storage.db import connect_database, migrate
    from actors.allocator import ensure_system_accounts

    db = connect_database(config.database_url)
    migrate(db)
    ensure_system_accounts(config.shards)
    if pool:
        generate_pool(db, KeyRing.single(config.master_key), pool)
    db.close()
    return ActorSystem(config).start()


def register(system: ActorSystem, username: str) -> m.Registered:
    return system.router.ask_actor("allocator", m.Register(username, "pw-hash", "pay-hash"))


def fund(system: ActorSystem, account_id: int, amount: int, asset: str = "ETH") -> m.OpResult:
    return system.router.command(m.Credit(op_id=f"fund-{account_id}-{next(_ids)}", account_id=account_id,
                                          asset=asset, amount=amount))
