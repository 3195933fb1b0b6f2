"""Ledger and idempotency, without threads: the Book (in-memory balances with batch undo) and the
ShardLedger (plan, group-commit, replay, outbox) on a migrated database, MariaDB and SQLite."""

from __future__ import annotations

import pytest

from core import messages as m
from ledger.book import AVAILABLE, FROZEN, Book, Leg
from ledger.planning import credit_op_id
from storage.models import Operation, Outbox, Posting
from app.audit import run_audit
from core.errors import BalanceOverflow, CommitFailed, InsufficientFunds, OperationConflict
from core.limits import AMOUNT_LIMIT

from tests.core.support import db_balances, row_counts, unique_op

USER_A, USER_B, WORLD = 1, 2, 100


def assert_audit_ok() -> None:
    report = run_audit()
    assert report.ok, report.violations


# -- Book --------------------------------------------------------------------------------------------------

def test_book_moves_money_between_buckets_and_lets_only_system_accounts_go_negative():
    book = Book(system_accounts=[WORLD])
    book.apply([Leg("ETH", WORLD, AVAILABLE, USER_A, AVAILABLE, 100)])
    book.apply([Leg("ETH", USER_A, AVAILABLE, USER_A, FROZEN, 30)])
    assert book.balance(USER_A, "ETH") == (70, 30)
    assert book.balance(WORLD, "ETH") == (-100, 0)
    assert book.balance(USER_B, "ETH") == (0, 0)
    with pytest.raises(InsufficientFunds):
        book.apply([Leg("ETH", USER_A, FROZEN, USER_B, AVAILABLE, 31)])


def test_book_applies_all_legs_or_none():
    book = Book(system_accounts=[WORLD])
    book.apply([Leg("ETH", WORLD, AVAILABLE, USER_A, AVAILABLE, 10)])
    legs = [Leg("ETH", USER_A, AVAILABLE, USER_B, AVAILABLE, 10),  # fine alone
            Leg("ETH", USER_A, AVAILABLE, USER_B, AVAILABLE, 1)]  # together they overdraw USER_A
    with pytest.raises(InsufficientFunds):
        book.apply(legs)
    assert book.balance(USER_A, "ETH") == (10, 0) and book.balance(USER_B, "ETH") == (0, 0)
    with pytest.raises(BalanceOverflow):
        book.apply([Leg("ETH", WORLD, AVAILABLE, USER_B, AVAILABLE, AMOUNT_LIMIT - 1),
                    Leg("ETH", WORLD, AVAILABLE, USER_B, AVAILABLE, 1)])
    assert book.balance(USER_B, "ETH") == (0, 0) and book.balance(WORLD, "ETH") == (-10, 0)


def test_book_rollback_restores_the_state_before_the_batch():
    book = Book(system_accounts=[WORLD])
    book.apply([Leg("ETH", WORLD, AVAILABLE, USER_A, AVAILABLE, 50)])
    book.commit_batch()
    assert book.touched() == []
    book.apply([Leg("ETH", USER_A, AVAILABLE, USER_B, AVAILABLE, 20)])
    book.apply([Leg("ETH", USER_B, AVAILABLE, USER_B, FROZEN, 5)])
    assert sorted(book.touched()) == [(USER_A, "ETH", 30, 0), (USER_B, "ETH", 15, 5)]
    book.rollback_batch()
    assert book.balance(USER_A, "ETH") == (50, 0)
    assert (USER_B, "ETH") not in book.balances  # a balance the batch created disappears again
    assert book.touched() == []


# -- ShardLedger -----------------------------------------------------------------------------------------

def test_same_shard_transfer_writes_operation_postings_and_balances(ledger_env):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    assert alice.shard == carol.shard
    env.fund(alice, 1000)
    op = unique_op("t")
    reply = env.one(alice.shard, m.Transfer(op, alice.account_id, carol.account_id, carol.shard, "ETH", 300))
    assert reply == m.OpResult(op, "completed", replayed=False)
    assert db_balances([alice.account_id, carol.account_id]) == {alice.account_id: (700, 0),
                                                                 carol.account_id: (300, 0)}
    (posting,) = Posting.select().where(Posting.op_id == op)
    assert (posting.debit_account, posting.credit_account, posting.amount) == (alice.account_id, carol.account_id,
                                                                              300)
    assert Operation.get_by_id(op).kind == "transfer"
    assert_audit_ok()


@pytest.mark.parametrize("from_memory", [True, False], ids=["memory", "database"])
def test_replay_returns_the_first_result_and_changes_nothing(ledger_env, from_memory):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    env.fund(alice, 1000)
    transfer = m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 300)
    first = env.one(alice.shard, transfer)
    if not from_memory:
        env.reload(alice.shard)  # a restarted shard finds the first result in the operation table
    before = row_counts()
    again = env.one(alice.shard, transfer)
    assert again == m.OpResult(first.op_id, "completed", replayed=True)
    assert row_counts() == before
    assert env.shards[alice.shard].book.balance(alice.account_id, "ETH") == (700, 0)


@pytest.mark.parametrize("from_memory", [True, False], ids=["memory", "database"])
def test_same_op_id_with_other_content_is_a_conflict(ledger_env, from_memory):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    env.fund(alice, 1000)
    op = unique_op("t")
    env.one(alice.shard, m.Transfer(op, alice.account_id, carol.account_id, carol.shard, "ETH", 300))
    if not from_memory:
        env.reload(alice.shard)
    before = row_counts()
    for other in (m.Transfer(op, alice.account_id, carol.account_id, carol.shard, "ETH", 301),
                  m.Transfer(op, alice.account_id, carol.account_id, carol.shard, "TOK", 300),
                  m.Credit(op, alice.account_id, "ETH", 300)):
        reply = env.one(alice.shard, other)
        assert isinstance(reply, OperationConflict) and reply.code == "idempotency_key_reused"
    assert row_counts() == before
    assert env.shards[alice.shard].book.balance(alice.account_id, "ETH") == (700, 0)


def test_duplicate_op_id_inside_one_batch_applies_once(ledger_env):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    env.fund(alice, 1000)
    transfer = m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 300)
    conflicting = m.Transfer(transfer.op_id, alice.account_id, carol.account_id, carol.shard, "ETH", 1)
    replies = env.run(alice.shard, transfer, transfer, conflicting).replies
    assert replies[0] == m.OpResult(transfer.op_id, "completed", replayed=False)
    assert replies[1] == m.OpResult(transfer.op_id, "completed", replayed=True)
    assert isinstance(replies[2], OperationConflict)
    assert Operation.select().where(Operation.op_id == transfer.op_id).count() == 1
    assert Posting.select().where(Posting.op_id == transfer.op_id).count() == 1
    assert db_balances([alice.account_id])[alice.account_id] == (700, 0)
    assert_audit_ok()


def test_a_failed_command_is_not_remembered_so_its_id_may_be_retried(ledger_env):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    transfer = m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 300)
    replies = env.run(alice.shard, transfer, transfer).replies
    assert all(isinstance(r, InsufficientFunds) for r in replies)
    env.fund(alice, 300)
    assert env.one(alice.shard, transfer) == m.OpResult(transfer.op_id, "completed")


def test_cross_shard_transfer_goes_through_outbox_and_idempotent_credit(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    assert alice.shard != bob.shard
    source, target = env.shards[alice.shard], env.shards[bob.shard]
    env.fund(alice, 1000)
    op = unique_op("x")
    outcome = env.run(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 400))
    assert outcome.replies == [m.OpResult(op, "in_transit")]
    ((to_shard, credit),) = outcome.credits_to_send
    assert to_shard == bob.shard and credit.op_id == credit_op_id(op) and credit.amount == 400
    assert source.book.balance(source.system["transit"], "ETH") == (400, 0)
    assert Outbox.get(Outbox.op_id == credit.op_id).delivered_at is None
    assert_audit_ok()  # 400 in transit is owed by an undelivered credit

    (applied,) = env.deliver(outcome)
    assert applied == m.OpResult(credit.op_id, "completed")
    assert target.book.balance(bob.account_id, "ETH") == (400, 0)
    assert target.book.balance(target.system["transit"], "ETH") == (-400, 0)
    assert credit.op_id not in source.outbox.unacked
    source.flush_delivered()
    assert Outbox.get(Outbox.op_id == credit.op_id).delivered_at is not None

    redelivered = env.run(bob.shard, credit)  # the relay may deliver twice: the credit applies once
    assert redelivered.replies == [m.OpResult(credit.op_id, "completed", replayed=True)]
    assert redelivered.acks_to_send == {alice.shard: [credit.op_id]}  # and is acknowledged again
    assert target.book.balance(bob.account_id, "ETH") == (400, 0)
    assert_audit_ok()


def test_restart_finds_undelivered_outbox_rows_due_at_once(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    env.fund(alice, 1000)
    outcome = env.run(alice.shard, m.Transfer(unique_op("x"), alice.account_id, bob.account_id, bob.shard,
                                              "ETH", 250))
    (_, credit), = outcome.credits_to_send
    assert env.shards[alice.shard].due_for_redelivery() == []  # just sent: not due yet
    restarted = env.reload(alice.shard)
    assert restarted.due_for_redelivery() == [(bob.shard, credit)]
    assert restarted.due_for_redelivery() == []  # handed out once per redelivery interval
    (applied,) = [env.one(bob.shard, credit)]
    assert applied.status == "completed"
    restarted.flush_delivered()
    assert env.reload(alice.shard).outbox.unacked == {}
    assert_audit_ok()


def test_assets_are_separate_balances(ledger_env):
    env = ledger_env
    alice, _, carol = env.open_account(), env.open_account(), env.open_account()
    env.fund(alice, 10, asset="TOK")
    reply = env.one(alice.shard, m.Transfer(unique_op(), alice.account_id, carol.account_id, carol.shard, "ETH", 1))
    assert isinstance(reply, InsufficientFunds)
    env.one(alice.shard, m.Transfer(unique_op(), alice.account_id, carol.account_id, carol.shard, "TOK", 4))
    assert env.shards[alice.shard].balances(carol.account_id) == {"ETH": (0, 0), "TOK": (4, 0)}
    assert_audit_ok()


# -- a failed commit -------------------------------------------------------------------------------------

def rename_posting_table(env, away: bool) -> None:
    """Make the real database refuse the next batch (posting inserts fail), or undo that."""
    old, new = ("posting", "posting_x") if away else ("posting_x", "posting")
    env.db.execute_sql(f"ALTER TABLE {old} RENAME TO {new}")


def test_failed_commit_undoes_the_batch_in_memory_and_answers_commit_failed(ledger_env):
    env = ledger_env
    alice, bob, carol = env.open_account(), env.open_account(), env.open_account()
    env.fund(alice, 1000)
    committed = m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 100)
    env.one(alice.shard, committed)
    shard = env.shards[alice.shard]
    memory_before = dict(shard.book.balances)
    rows_before, ops_before = row_counts(), Operation.select().count()
    batch = [m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 500),
             m.Transfer(unique_op("x"), alice.account_id, bob.account_id, bob.shard, "ETH", 300),
             m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 200),
             committed]
    rename_posting_table(env, away=True)
    try:
        outcome = env.run(alice.shard, *batch)
    finally:
        rename_posting_table(env, away=False)
    # Every new operation failed as a whole; the third one only overdrew because of the first two, which
    # never happened, so it must be told to retry too. The replay of a committed one still answers.
    assert [type(r) for r in outcome.replies[:3]] == [CommitFailed] * 3
    assert all(r.code == "commit_failed" for r in outcome.replies[:3])
    assert outcome.replies[3] == m.OpResult(committed.op_id, "completed", replayed=True)
    assert outcome.credits_to_send == []
    assert shard.book.balances == memory_before
    assert shard.outbox.unacked == {}
    assert row_counts() == rows_before and Operation.select().count() == ops_before
    assert db_balances([alice.account_id]) == {alice.account_id: (900, 0)}

    retried = env.run(alice.shard, *batch[:2])  # the same op ids now succeed, once
    assert [r.status for r in retried.replies] == ["completed", "in_transit"]
    assert not any(r.replayed for r in retried.replies)
    env.deliver(retried)
    assert env.shards[bob.shard].book.balance(bob.account_id, "ETH") == (300, 0)
    assert shard.book.balance(alice.account_id, "ETH") == (100, 0)
    assert db_balances([alice.account_id, carol.account_id]) == {alice.account_id: (100, 0),
                                                                 carol.account_id: (600, 0)}
    assert_audit_ok()


@pytest.mark.parametrize("table", ["operation", "account"])
def test_a_database_failure_before_the_write_fails_the_whole_batch_cleanly(ledger_env, table):
    """The replay lookup (operation) and the lookup of an account the shard has not heard of yet (account)
    read the database before anything is written: if it fails there, every command answers CommitFailed
    and memory keeps no trace of the batch."""
    env = ledger_env
    alice, _, carol, _ = (env.open_account() for _ in range(4))
    env.fund(alice, 1000)
    shard = env.reload(alice.shard)
    newcomer = env.allocator.register(m.Register(unique_op("late"), "pw", "pay"))  # shard not told yet
    assert newcomer.shard == alice.shard and newcomer.account_id not in shard.accounts
    memory_before, rows_before = dict(shard.book.balances), row_counts()
    batch = [m.Transfer(unique_op("t"), alice.account_id, carol.account_id, carol.shard, "ETH", 100),
             m.Credit(unique_op("c"), newcomer.account_id, "ETH", 5)]
    env.db.execute_sql(f"ALTER TABLE {table} RENAME TO {table}_x")
    try:
        outcome = env.run(alice.shard, *batch)
    finally:
        env.db.execute_sql(f"ALTER TABLE {table}_x RENAME TO {table}")
    assert [type(r) for r in outcome.replies] == [CommitFailed, CommitFailed]
    assert shard.book.balances == memory_before
    assert row_counts() == rows_before
    assert [r.status for r in env.run(alice.shard, *batch).replies] == ["completed", "completed"]
    assert_audit_ok()
