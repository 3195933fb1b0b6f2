"""A shard under faults it cannot see the end of: a commit whose outcome is unknown, lock conflicts, a
recipient routed to the wrong shard, and a cross-shard credit its target never acknowledges."""

from __future__ import annotations

import logging

import peewee

from core import messages as m
from core.limits import REDELIVER_ALERT_ATTEMPTS, REDELIVER_MAX_MS
from ledger import outbox as outbox_module
from ledger.outbox import redelivery_interval_ms
from tests.core.support import db_balances, row_counts, unique_op
from app.audit import run_audit
from core.errors import CommitFailed, WrongShard


def _fail_once_after(ledger, error: Exception, commit_first: bool):
    """Make the next write raise `error`, after committing it (the connection died after COMMIT reached
    the server) or before anything was sent (the server rolled it back)."""
    original = ledger.store.write_once
    calls = {"n": 0}

    def write(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            if commit_first:
                original(batch)
            raise error
        return original(batch)

    ledger.store.write_once = write
    return calls


def test_a_commit_with_unknown_outcome_reloads_memory_from_the_database(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    while bob.shard != alice.shard:  # a same-shard pair keeps the batch to one ledger
        bob = env.open_account()
    ledger = env.shards[alice.shard]
    env.fund(alice, 1000)
    op = unique_op("t")
    _fail_once_after(ledger, peewee.OperationalError("connection lost after COMMIT"), commit_first=True)
    reply = env.one(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 300))
    assert isinstance(reply, CommitFailed)
    # The batch did commit: memory must now say so, not the rolled-back guess.
    assert ledger.book.balance(alice.account_id, "ETH") == (700, 0)
    assert db_balances([alice.account_id, bob.account_id]) == {alice.account_id: (700, 0), bob.account_id: (300, 0)}
    retried = env.one(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 300))
    assert retried == m.OpResult(op, "completed", replayed=True)  # applied exactly once
    later = env.one(alice.shard, m.Transfer(unique_op("t"), alice.account_id, bob.account_id, bob.shard, "ETH", 100))
    assert later.status == "completed"  # and no stale balance overwrote the database
    assert db_balances([alice.account_id, bob.account_id]) == {alice.account_id: (600, 0), bob.account_id: (400, 0)}
    report = run_audit()
    assert report.ok, report.violations


def test_a_deadlocked_write_is_retried_and_applied_once(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    env.fund(alice, 1000)
    ledger = env.shards[alice.shard]
    calls = _fail_once_after(ledger, peewee.OperationalError(None, 1213, "Deadlock found"), commit_first=False)
    op = unique_op("t")
    reply = env.one(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 250))
    assert reply.op_id == op and not reply.replayed
    assert calls["n"] == 2
    assert db_balances([alice.account_id])[alice.account_id] == (750, 0)
    assert run_audit().ok


def test_a_recipient_routed_to_the_wrong_shard_is_refused_before_money_leaves(any_db_url):
    from tests.core.support import LedgerEnv

    env = LedgerEnv.create(any_db_url, shard_count=3)
    try:
        alice, bob = env.open_account(), env.open_account()
        assert alice.shard != bob.shard
        directory = {alice.account_id: alice.shard, bob.account_id: bob.shard}
        ledger = env.shards[alice.shard]
        ledger.shard_of = directory.__getitem__
        env.fund(alice, 1000)
        before = row_counts()
        wrong = next(s for s in range(3) if s not in (alice.shard, bob.shard))
        reply = env.one(alice.shard, m.Transfer(unique_op("t"), alice.account_id, bob.account_id, wrong, "ETH", 10))
        assert isinstance(reply, WrongShard)
        assert row_counts() == before
        assert ledger.book.balance(alice.account_id, "ETH") == (1000, 0)
    finally:
        env.close()


def test_an_unacknowledged_credit_is_redelivered_with_backoff_and_raised_once(ledger_env, caplog):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    env.fund(alice, 1000)
    source = env.shards[alice.shard]
    outcome = env.run(alice.shard, m.Transfer(unique_op("x"), alice.account_id, bob.account_id, bob.shard,
                                              "ETH", 5))
    (_, credit), = outcome.credits_to_send
    clock = env.clock  # integer milliseconds, moved only here
    sent_at, gaps = clock(), []
    with caplog.at_level(logging.CRITICAL, logger=outbox_module.__name__):
        for _ in range(10_000):  # 500 s of 50 ms steps: far more than the ten attempts need
            if len(gaps) > REDELIVER_ALERT_ATTEMPTS:
                break
            clock.advance(50)
            if source.due_for_redelivery() == [(bob.shard, credit)]:
                gaps.append(clock() - sent_at)
                sent_at = clock()
    assert gaps[:6] == [2_000, 4_000, 8_000, 16_000, 32_000, 60_000]  # doubling from REDELIVER_AFTER_MS, capped
    assert gaps[:6] == [redelivery_interval_ms(n) for n in range(1, 7)]
    assert max(gaps) == REDELIVER_MAX_MS
    alerts = [r for r in caplog.records if r.levelno == logging.CRITICAL and getattr(r, "op_id", "") == credit.op_id]
    assert len(alerts) == 1


def test_a_batch_script_failing_in_its_last_statement_leaves_nothing_and_is_retried_whole(mysql_ledger_env):
    """On MySQL a batch of money goes as one script (storage/sql.transaction_script). A trigger refuses the
    balance upsert, the script's last statement: the operation, posting and outbox rows sent before it in
    the same round trip must not stay, memory must not keep the transfer, and once the fault is gone the
    retry applies it once."""
    env = mysql_ledger_env
    db = env.db
    alice, bob = env.open_account(), env.open_account()
    while bob.shard == alice.shard:  # cross-shard: the script also carries an outbox row
        bob = env.open_account()
    env.fund(alice, 1000)
    ledger = env.shards[alice.shard]
    rows_before = row_counts()
    db.execute_sql(f"CREATE TRIGGER refuse_balance BEFORE UPDATE ON balance FOR EACH ROW BEGIN "
                   f"IF NEW.account_id = {alice.account_id} THEN SIGNAL SQLSTATE '45000' "
                   f"SET MESSAGE_TEXT = 'refused by the test'; END IF; END")
    op = unique_op("t")
    transfer = m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 300)
    try:
        reply = env.one(alice.shard, transfer)
    finally:
        db.execute_sql("DROP TRIGGER refuse_balance")
    assert isinstance(reply, CommitFailed)
    assert row_counts() == rows_before
    assert ledger.book.balance(alice.account_id, "ETH") == (1000, 0)
    retried = env.one(alice.shard, transfer)
    assert retried.op_id == op and retried.status == "in_transit" and not retried.replayed
    assert db_balances([alice.account_id])[alice.account_id] == (700, 0)
    assert row_counts()["operation"] == rows_before["operation"] + 1
    report = run_audit()
    assert report.ok, report.violations
