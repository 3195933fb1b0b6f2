"""The fence of a shard (or singleton) in cluster mode: an epoch row in `shard_owner` (migration 0060).

Taking ownership (under the shard's database lock, storage/locks.NamedLock) increments the epoch; the owner
keeps the epoch it got. Every batch transaction first checks it with a conditional update: zero rows means
another host has taken the shard since, and the transaction must roll back (FenceLost).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

import peewee

from core.errors import WalletError
from storage import sql


class FenceLost(WalletError):
    """Another host owns this shard now: this one may not commit and lets go of it."""

    code = "fence_lost"
    status = 503


class Fence:
    def __init__(self, name: str, epoch: int) -> None:
        self.name = name
        self.epoch = epoch
        self.lost = False

    @classmethod
    def take(cls, db: peewee.Database, name: str, owner: str) -> Fence:
        """Increment the epoch of `name` and keep it (call only while holding the name's database lock)."""
        now = time.time_ns() // 1_000_000
        with db.atomic():
            db.execute_sql("INSERT IGNORE INTO shard_owner (name, epoch, batches, owner, updated_at_ms) "
                           "VALUES (%s, 0, 0, '', %s)", (name, now))
            db.execute_sql("UPDATE shard_owner SET epoch = epoch + 1, owner = %s, updated_at_ms = %s WHERE name = %s",
                           (owner[:255], now, name))
            (epoch,) = db.execute_sql("SELECT epoch FROM shard_owner WHERE name = %s", (name,)).fetchone()
        return cls(name, int(epoch))

    def check(self, db: peewee.Database) -> None:
        """First statement of every batch transaction: still ours? (It also serialises against a taker.)"""
        if self.lost:
            raise FenceLost(f"{self.name}: fenced out")
        cursor = db.execute_sql(_CHECK.format(p=db.param), (self.name, self.epoch))
        if cursor.rowcount != 1:
            self.taken_over()

    def guard(self, db: peewee.Database) -> str:
        """The same check as one finished statement, for a transaction sent as a script
        (storage/sql.transaction_script); if it changes no row, call `taken_over`."""
        if self.lost:
            raise FenceLost(f"{self.name}: fenced out")
        return sql.inline(db, _CHECK.replace("{p}", "{}"), (self.name, self.epoch))

    def taken_over(self) -> None:
        self.lost = True
        raise FenceLost(f"{self.name}: another host took it over (epoch {self.epoch} is not current)")


_CHECK = "UPDATE shard_owner SET batches = batches + 1 WHERE name = {p} AND epoch = {p}"


@contextlib.contextmanager
def fenced(db: peewee.Database, fence: Fence | None) -> Iterator[None]:
    """A transaction of a fenced owner (a shard's batch; the signer's, the allocator's, BlockWatch's writes): its
    first statement checks the fence, so a paused owner that lost its lock while stopped commits nothing of it.
    No fence (role all, one process owns everything under the system lock): a plain transaction."""
    with db.atomic():
        if fence is not None:
            fence.check(db)
        yield


@dataclasses.dataclass(frozen=True)
class Owner:
    name: str  # "shard-3", "signer", ...
    epoch: int
    owner: str  # the process id that took the epoch
    batches: int  # fenced transactions committed (under every epoch)
    updated_at_ms: int


def owners(db: peewee.Database) -> list[Owner]:
    """Who owns each shard and singleton, as the fences say (the database's truth; etcd only says who should)."""
    rows = db.execute_sql("SELECT name, epoch, owner, batches, updated_at_ms FROM shard_owner ORDER BY name")
    return sorted((Owner(str(name), int(epoch), str(owner), int(batches), int(updated))
                   for name, epoch, owner, batches, updated in rows), key=_owner_order)


def _owner_order(owner: Owner) -> tuple:
    """Shards by number first (shard-10 after shard-9), then the singletons by name."""
    if owner.name.startswith("shard-") and owner.name.removeprefix("shard-").isdigit():
        return 0, int(owner.name.removeprefix("shard-")), ""
    return 1, 0, owner.name
