"""Withdrawals in the shard's ledger, without threads (real MariaDB and SQLite): request freezes amount + fee
with the row in one transaction, approvals (four eyes), rejection and cancel unfreeze exactly, settlement books
the amount, the fee and the gas, and every refusal of rule 1 changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from app.audit import run_audit
from core import messages as m
from core.errors import (
    AccountOnHold, AlreadyApproved, BelowMinimum, DailyLimitExceeded, InsufficientFunds, InvalidAddress, OwnAddress,
    UnknownAsset, UnknownWithdrawal, ValidationError, WithdrawalStateConflict, ZeroAddress,
)
from core.limits import DAILY_WINDOW_MS
from ledger.withdrawals import WithdrawalRules
from storage import stafflog
from storage.models import PoolKey, TxAttempt, Withdrawal, WithdrawalApproval
from tests.core.support import EXTERNAL_ADDRESS, LedgerEnv, db_balances, row_counts, unique_op

BOB_REVIEWER, CAROL_REVIEWER = (11, "bob"), (12, "carol")


@pytest.fixture
def env(any_db_url):
    env = LedgerEnv.create(any_db_url, shard_count=2)
    yield env
    env.close()


def approve(env, user, withdrawal_id, reviewer=BOB_REVIEWER):
    return env.one(user.shard, m.ApproveWithdrawal(unique_op("a"), user.account_id, withdrawal_id, *reviewer))


def settle(env, user, withdrawal_id, tx_hash, succeeded=1, gas_paid=21_000 * 10**9):
    return env.one(user.shard, m.SettleWithdrawal(unique_op("s"), user.account_id, withdrawal_id, tx_hash, succeeded,
                                                  gas_paid, 123))


def assert_audit_ok():
    report = run_audit()
    assert report.ok, report.violations


def test_a_request_freezes_amount_plus_fee_with_its_row(env):
    alice = env.open_account()
    env.fund(alice, 1000)
    op = unique_op("w")
    reply = env.withdraw(alice, 600, fee=40, op_id=op)
    assert (reply.status, reply.replayed) == ("reviewing", False) and reply.ref is not None
    row = Withdrawal.get_by_id(reply.ref)
    assert (row.account_id, row.asset, row.amount, row.fee, row.status, row.approvals_needed, row.to_address) == (
        alice.account_id, "ETH", 600, 40, "reviewing", 1, EXTERNAL_ADDRESS)
    assert db_balances([alice.account_id]) == {alice.account_id: (360, 640)}
    again = env.withdraw(alice, 600, fee=40, op_id=op)  # a retry under the same Idempotency-Key
    assert again == dataclasses.replace(reply, replayed=True)
    assert Withdrawal.select().count() == 1
    assert_audit_ok()


def test_cancel_and_reject_unfreeze_exactly_and_only_while_reviewing(env):
    alice = env.open_account()
    env.fund(alice, 1000)
    first, second = env.withdraw(alice, 100, fee=5).ref, env.withdraw(alice, 200, fee=5).ref
    cancelled = env.one(alice.shard, m.CancelWithdrawal(unique_op("c"), alice.account_id, first))
    assert (cancelled.status, cancelled.ref) == ("cancelled", first)
    rejected = env.one(alice.shard, m.RejectWithdrawal(unique_op("r"), alice.account_id, second, *BOB_REVIEWER,
                                                       "destination looks like a scam"))
    assert rejected.status == "rejected"
    assert db_balances([alice.account_id]) == {alice.account_id: (1000, 0)}
    assert Withdrawal.get_by_id(second).reason == "destination looks like a scam"
    log = stafflog.history(f"withdrawal:{second}")
    assert [(e.action, e.admin_name) for e in log] == [("withdrawal.reject", "bob")]
    before = row_counts()
    for late in (m.CancelWithdrawal(unique_op("c"), alice.account_id, second),
                 m.ApproveWithdrawal(unique_op("a"), alice.account_id, first, *BOB_REVIEWER)):
        assert isinstance(env.one(alice.shard, late), UnknownWithdrawal)  # closed here; the front answers 409
    assert row_counts() == before
    assert_audit_ok()


def test_another_accounts_withdrawal_is_unknown(env):
    alice, mallory = env.open_account(), env.open_account()
    while mallory.shard != alice.shard:
        mallory = env.open_account()
    env.fund(alice, 1000)
    wid = env.withdraw(alice, 100).ref
    before = row_counts()
    reply = env.one(alice.shard, m.CancelWithdrawal(unique_op("c"), mallory.account_id, wid))
    assert isinstance(reply, UnknownWithdrawal)
    assert row_counts() == before and Withdrawal.get_by_id(wid).status == "reviewing"


def test_four_eyes_needs_two_different_reviewers_and_survives_a_restart(env):
    env.rules = WithdrawalRules({}, {}, {}, {"ETH": 500})
    env.shards = [env.load_shard(s) for s in range(env.shard_count)]
    alice = env.open_account()
    env.fund(alice, 1000)
    small, large = env.withdraw(alice, 500).ref, env.withdraw(alice, 400).ref
    assert Withdrawal.get_by_id(small).approvals_needed == 1  # at the threshold: one reviewer
    assert Withdrawal.get_by_id(large).approvals_needed == 1
    big = env.withdraw(alice, 90, fee=1).ref  # funds left: 10
    assert big is not None
    env.fund(alice, 10_000)
    huge = env.withdraw(alice, 501).ref
    assert approve(env, alice, huge).status == "reviewing"  # one of two
    env.reload(alice.shard)  # the first approval is in the database, not only in memory
    assert isinstance(approve(env, alice, huge), AlreadyApproved)
    assert approve(env, alice, huge, CAROL_REVIEWER).status == "approved"
    assert {a.admin_name for a in WithdrawalApproval.select().where(WithdrawalApproval.withdrawal_id == huge)} == {
        "bob", "carol"}
    assert Withdrawal.get_by_id(huge).status == "approved"
    assert [e.action for e in stafflog.history(f"withdrawal:{huge}")] == ["withdrawal.approve"] * 2
    assert_audit_ok()


def test_auto_approval_below_the_threshold_is_logged_as_the_service(env):
    env.rules = WithdrawalRules({}, {}, {"ETH": 100}, {})
    env.shards = [env.load_shard(s) for s in range(env.shard_count)]
    alice = env.open_account()
    env.fund(alice, 1000)
    assert env.withdraw(alice, 100).status == "reviewing"  # not below
    auto = env.withdraw(alice, 99)
    assert auto.status == "approved"
    (entry,) = stafflog.history(f"withdrawal:{auto.ref}")
    assert (entry.action, entry.admin_id, entry.admin_name) == ("withdrawal.auto_approve", None, "system")
    assert_audit_ok()


def test_settlement_books_amount_fee_and_gas(env):
    alice = env.open_account()
    env.fund(alice, 10**18)
    wid = env.withdraw(alice, 4 * 10**17, fee=10**15).ref
    approve(env, alice, wid)
    tx_hash = env.act_as_signer(wid)
    TxAttempt.insert(purpose="withdrawal", ref_id=wid, lane="0x" + "77" * 20, nonce=0, tx_hash="0x" + "cd" * 32,
                     raw=b"\x02", max_fee_per_gas=2 * 10**9, max_priority_fee_per_gas=2 * 10**9, gas_limit=21_000,
                     value=4 * 10**17, kind="replacement", status="broadcast").execute()
    shard = env.shards[alice.shard]
    gas = 21_000 * 3 * 10**9
    reply = settle(env, alice, wid, tx_hash, gas_paid=gas)
    assert (reply.status, reply.ref) == ("confirmed", wid)
    assert db_balances([alice.account_id]) == {alice.account_id: (6 * 10**17 - 10**15, 0)}
    assert shard.book.balance(shard.system["fees"], "ETH") == (10**15 - gas, 0)  # net fee income
    row = Withdrawal.get_by_id(wid)
    assert (row.status, row.tx_hash, row.gas_paid, row.block_number) == ("confirmed", tx_hash, gas, 123)
    assert {a.tx_hash: a.status for a in TxAttempt.select()} == {tx_hash: "mined", "0x" + "cd" * 32: "replaced"}
    assert isinstance(settle(env, alice, wid, tx_hash), UnknownWithdrawal)  # settled once: closed here
    assert_audit_ok()


def test_a_reverted_transaction_refunds_once_and_is_flagged(env):
    alice = env.open_account()
    env.fund(alice, 10**18)
    wid = env.withdraw(alice, 10**17, fee=10**15).ref
    approve(env, alice, wid)
    tx_hash = env.act_as_signer(wid)
    gas = 50_000 * 10**9
    assert settle(env, alice, wid, tx_hash, succeeded=0, gas_paid=gas).status == "failed"
    assert db_balances([alice.account_id]) == {alice.account_id: (10**18, 0)}
    shard = env.shards[alice.shard]
    assert shard.book.balance(shard.system["fees"], "ETH") == (-gas, 0)  # the service paid the gas
    row = Withdrawal.get_by_id(wid)
    assert row.status == "failed" and row.needs_operator and "reverted" in row.operator_reason
    assert_audit_ok()


def test_a_settlement_before_anything_was_signed_is_refused(env):
    alice = env.open_account()
    env.fund(alice, 1000)
    wid = env.withdraw(alice, 100).ref
    before = row_counts()
    assert isinstance(settle(env, alice, wid, "0x" + "ab" * 32), WithdrawalStateConflict)
    assert row_counts() == before


def test_rule_one_refusals_change_nothing(env):
    env.rules = WithdrawalRules({"ETH": 50}, {"ETH": 100_000}, {}, {})
    env.shards = [env.load_shard(s) for s in range(env.shard_count)]
    alice = env.open_account()
    held = env.open_account()
    env.fund(alice, 10_000)
    env.fund(held, 10_000)
    env.shards[held.shard].set_hold(held.account_id, True)
    own = PoolKey.select(PoolKey.address).first().address
    cases = [
        ("below the minimum", env.withdraw(alice, 49), BelowMinimum),
        ("over the balance with the fee", env.withdraw(alice, 9_990, fee=11), InsufficientFunds),
        ("zero address", env.withdraw(alice, 100, to="0x" + "0" * 40), ZeroAddress),
        ("bad checksum", env.withdraw(alice, 100, to=EXTERNAL_ADDRESS.replace("dEaD", "dead")), InvalidAddress),
        ("not hex", env.withdraw(alice, 100, to="0x" + "zz" * 20), InvalidAddress),
        ("no 0x", env.withdraw(alice, 100, to="00" * 20), InvalidAddress),
        ("too short", env.withdraw(alice, 100, to="0x1234"), InvalidAddress),
        ("own deposit address", env.withdraw(alice, 100, to=own), OwnAddress),
        ("unknown asset", env.withdraw(alice, 100, asset="DOGE"), UnknownAsset),
        ("held account", env.withdraw(held, 100), AccountOnHold),
        ("bad speed", env.one(alice.shard, m.RequestWithdrawal(unique_op("w"), alice.account_id, "ETH",
                                                               EXTERNAL_ADDRESS, 100, 0, "warp")), ValidationError),
    ]
    for name, reply, error in cases:
        assert isinstance(reply, error), (name, reply)
    assert Withdrawal.select().count() == 0
    assert db_balances([alice.account_id]) == {alice.account_id: (10_000, 0)}
    assert_audit_ok()


def test_the_daily_limit_rolls_over_24_hours_and_ignores_cancelled_requests(env):
    env.rules = WithdrawalRules({}, {"ETH": 1000}, {}, {})
    env.shards = [env.load_shard(s) for s in range(env.shard_count)]
    alice = env.open_account()
    env.fund(alice, 10_000)
    first = env.withdraw(alice, 600).ref
    env.wall_clock.advance(DAILY_WINDOW_MS // 2)
    assert isinstance(env.withdraw(alice, 401), DailyLimitExceeded)
    second = env.withdraw(alice, 400).ref
    assert isinstance(env.withdraw(alice, 1), DailyLimitExceeded)
    env.one(alice.shard, m.CancelWithdrawal(unique_op("c"), alice.account_id, second))
    assert env.withdraw(alice, 400).status == "reviewing"  # the cancelled 400 no longer counts
    env.reload(alice.shard)  # the window is rebuilt from the database
    assert isinstance(env.withdraw(alice, 1), DailyLimitExceeded)
    env.wall_clock.advance(DAILY_WINDOW_MS // 2)  # the first request is 24 h old now
    assert env.withdraw(alice, 600).status == "reviewing"
    assert first is not None
    assert_audit_ok()


def test_a_request_the_balances_refuse_leaves_no_open_withdrawal_and_no_daily_use(env):
    env.rules = WithdrawalRules({}, {"ETH": 10_000}, {}, {})
    env.shards = [env.load_shard(s) for s in range(env.shard_count)]
    alice = env.open_account()
    env.fund(alice, 1000)
    shard = env.shards[alice.shard]
    outcome = env.run(alice.shard, m.RequestWithdrawal(unique_op("w"), alice.account_id, "ETH", EXTERNAL_ADDRESS,
                                                       5_000, 0, "fast"),
                      m.RequestWithdrawal(unique_op("w"), alice.account_id, "ETH", EXTERNAL_ADDRESS, 900, 0, "fast"))
    refused, taken = outcome.replies
    assert isinstance(refused, InsufficientFunds) and taken.status == "reviewing"
    assert list(shard.withdrawals.open) == [taken.ref]
    assert shard.withdrawals.used_today(alice.account_id, "ETH", env.wall_clock()) == 900
    assert {w.id for w in Withdrawal.select()} == {taken.ref}
    assert_audit_ok()
