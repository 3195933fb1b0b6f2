"""Helpers shared by tests: start a system with a pool, register accounts, fund them, wait for a condition."""

from __future__ import annotations

import itertools

from app.provision import provision
from app.system import ActorSystem
from core import messages as m
from devnet.waiting import FakeClock, wait_until  # noqa: F401 - the tests' one wait helper, with its clock
from storage.db import connect_database

_ids = itertools.count()


def provision_database(config, pool: int = 50) -> None:
    """What `wallet init --pool N` does, on the test's database."""
    db = connect_database(config.database_url)
    provision(db, config.shards, pool, config.key_ring())
    db.close()


def start_system(config, pool: int = 50, **system_options) -> ActorSystem:
    provision_database(config, pool)
    return ActorSystem(config, **system_options).start()


def register(system: ActorSystem, username: str) -> m.Registered:
    return system.router.ask_actor("allocator", m.Register(username, "pw-hash", "pay-hash"))


def fund(system: ActorSystem, account_id: int, amount: int, asset: str = "ETH") -> m.OpResult:
    return system.router.command(m.Credit(op_id=f"fund-{account_id}-{next(_ids)}", account_id=account_id,
                                          asset=asset, amount=amount))
