"""storage/fence.py on the real MariaDB: once another owner has taken a shard's next epoch, a batch of the
old owner commits nothing (its transaction rolls back), the old owner knows it is fenced out, and the new
owner's batches go on. Money stays exact."""

from __future__ import annotations

from core import messages as m
from core.errors import CommitFailed
from ledger.shard import ShardLedger
from storage.fence import Fence
from storage.models import Operation
from tests.core.support import ASSETS, LedgerEnv, db_balances, unique_op


def _fenced_ledger(env: LedgerEnv, shard: int, owner: str) -> ShardLedger:
    ledger = ShardLedger(shard, env.db, ASSETS, clock_ms=env.clock, rules=env.rules, wall_clock_ms=env.wall_clock,
                         fence=Fence.take(env.db, f"shard-{shard}", owner))
    ledger.load()
    return ledger


def test_old_owner_commits_nothing_after_a_takeover(mysql_url):
    env = LedgerEnv.create(mysql_url, shard_count=1)
    try:
        alice, bob = env.open_account("alice"), env.open_account("bob")
        env.fund(alice, 1000)
        old = _fenced_ledger(env, 0, "host-a")
        first = old.apply_batch([m.Transfer(unique_op("t"), alice.account_id, bob.account_id, 0, "ETH", 100)])
        assert first.replies[0].status == "completed" and not old.fenced_out

        new = _fenced_ledger(env, 0, "host-b")  # host-a paused; host-b took the lock and the next epoch
        assert new.store.fence.epoch == old.store.fence.epoch + 1
        late_op = unique_op("late")
        late = old.apply_batch([m.Transfer(late_op, alice.account_id, bob.account_id, 0, "ETH", 300)])
        assert isinstance(late.replies[0], CommitFailed) and old.fenced_out
        assert Operation.get_or_none(Operation.op_id == late_op) is None
        assert db_balances([alice.account_id, bob.account_id]) == {alice.account_id: (900, 0), bob.account_id: (100, 0)}

        again = new.apply_batch([m.Transfer(late_op, alice.account_id, bob.account_id, 0, "ETH", 300)])
        assert again.replies[0].status == "completed" and not again.replies[0].replayed
        assert db_balances([alice.account_id, bob.account_id]) == {alice.account_id: (600, 0), bob.account_id: (400, 0)}
        (epoch, batches), = env.db.execute_sql("SELECT epoch, batches FROM shard_owner WHERE name = 'shard-0'")
        assert (epoch, batches) == (new.store.fence.epoch, 2)  # host-a's first batch and host-b's one
    finally:
        env.close()
