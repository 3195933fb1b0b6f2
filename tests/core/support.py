"""Helpers for the money-core tests: row counts, and a migrated ledger driven without threads (ShardLedger
and AllocatorLogic, the plain classes under the actors)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from typing import Iterable

import peewee

from core import messages as m
from app.provision import provision
from ledger.accounts import AllocatorLogic
from ledger.shard import BatchOutcome, ShardLedger
from storage.db import connect_database
from storage.models import Account, Balance, Operation, Outbox, Posting
from tests.conftest import MASTER_KEY
from tests.helpers import FakeClock
from core.keys import KeyRing
from core.money import ETH, Address, Asset, AssetRegistry

TOKEN = Asset("TOK", 6, Address("0x" + "12" * 20))
ASSETS = AssetRegistry([ETH, TOKEN])


def row_counts() -> dict[str, int]:
    """Rows of the money tables: a failed command must leave every one of them as it was."""
    return {model._meta.table_name: model.select().count() for model in (Operation, Posting, Outbox, Balance)}


def db_balances(account_ids: Iterable[int], asset: str = "ETH") -> dict[int, tuple[int, int]]:
    """(available, frozen) per account as stored; a missing row is (0, 0)."""
    ids = list(account_ids)
    found = {a: (av, fr) for a, av, fr in Balance.select(Balance.account_id, Balance.available, Balance.frozen)
             .where(Balance.account_id.in_(ids) & (Balance.asset == asset)).tuples()}
    return {a: found.get(a, (0, 0)) for a in ids}


def user_total(asset: str = "ETH") -> int:
    """Sum of available + frozen over every user account (Python ints: SQLite would sum TEXT as floats)."""
    users = {a for (a,) in Account.select(Account.id).where(Account.kind == "user").tuples()}
    return sum(av + fr for a, av, fr in Balance.select(Balance.account_id, Balance.available, Balance.frozen)
               .where(Balance.asset == asset).tuples() if a in users)


def undelivered_outbox() -> int:
    return Outbox.select().where(Outbox.delivered_at.is_null()).count()


_unique = itertools.count()


def unique_op(prefix: str = "op") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_unique)}"


@dataclasses.dataclass
class LedgerEnv:
    """A migrated database with system accounts and a key pool, and one ShardLedger per shard, all driven
    from the test's thread (no actors)."""

    db: peewee.Database
    shard_count: int
    allocator: AllocatorLogic
    shards: list[ShardLedger]
    clock: FakeClock = dataclasses.field(default_factory=FakeClock)

    @classmethod
    def create(cls, url: str, shard_count: int = 2, pool: int = 20) -> LedgerEnv:
        db = connect_database(url)
        provision(db, shard_count, pool, KeyRing.single(MASTER_KEY))
        allocator = AllocatorLogic(shard_count, low_watermark=0)
        allocator.load()
        env = cls(db, shard_count, allocator, [])
        env.shards = [env.load_shard(s) for s in range(shard_count)]
        return env

    def load_shard(self, shard: int) -> ShardLedger:
        ledger = ShardLedger(shard, self.db, ASSETS, clock_ms=self.clock, wall_ms=self.clock)
        ledger.load()
        return ledger

    def reload(self, shard: int) -> ShardLedger:
        """Forget the shard's memory and rebuild it from the database, as a restart does."""
        self.shards[shard] = self.load_shard(shard)
        return self.shards[shard]

    def open_account(self, username: str | None = None) -> m.Registered:
        registered = self.allocator.register(m.Register(username or unique_op("user"), "pw", "pay"))
        self.shards[registered.shard].account_opened(registered.account_id)
        return registered

    def run(self, shard: int, *commands: m.MoneyCommand) -> BatchOutcome:
        """Apply `commands` as one batch on `shard` and deliver the acknowledgements it produced."""
        outcome = self.shards[shard].apply_batch(list(commands))
        for source, op_ids in outcome.acks_to_send.items():
            self.shards[source].delivered(op_ids)
        return outcome

    def one(self, shard: int, command: m.MoneyCommand):
        """The reply to a single command: an OpResult, or the WalletError it produced."""
        return self.run(shard, command).replies[0]

    def deliver(self, outcome: BatchOutcome) -> list:
        """Deliver the cross-shard credits a batch produced, as the relay would; returns their replies."""
        return [self.one(target, credit) for target, credit in outcome.credits_to_send]

    def fund(self, registered: m.Registered, amount: int, asset: str = "ETH") -> None:
        reply = self.one(registered.shard, m.Credit(unique_op("fund"), registered.account_id, asset, amount))
        assert isinstance(reply, m.OpResult), reply

    def close(self) -> None:
        for ledger in self.shards:
            ledger.flush_delivered()
        self.db.close()
