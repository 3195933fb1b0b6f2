"""Helpers shared by tests: start a system with a pool, register accounts, fund them, wait for a condition."""

from __future__ import annotations

import itertools
import time
from typing import Callable, TypeVar

from core import messages as m
from core.keys import KeyRing
from storage.pool import generate_pool
from app.system import ActorSystem

T = TypeVar("T")

_ids = itertools.count()


def start_system(config, pool: int = 50) -> ActorSystem:
    from storage.db import connect_database, migrate
    from ledger.accounts import ensure_system_accounts

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


def wait_until(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
