"""Amounts are exact integers on both backends (DECIMAL(65,0) on MariaDB, TEXT on SQLite): the largest
values round-trip unchanged, system balances may be negative, and nothing at or above 10**65 gets in.

2**255 has 77 digits, so it cannot be a round-trip value of a DECIMAL(65,0) column: it is the canonical
over-limit amount here (a uint256 token amount the service must refuse cleanly), and 2**215, the largest
power of two below 10**65, is the round-trip one.
"""

from __future__ import annotations

import peewee
import pytest

from core import messages as m
from storage.models import Balance, Posting
from app.audit import run_audit
from core.errors import BalanceOverflow, InvalidAmount
from core.limits import AMOUNT_LIMIT
from core.money import check_amount, parse_amount

from tests.core.support import db_balances, row_counts, unique_op

FITS = [2**215, 10**64 + 1, AMOUNT_LIMIT - 1, 1, 0]
TOO_LARGE = [AMOUNT_LIMIT, 2**255, 2**256 - 1]


@pytest.mark.parametrize("value", FITS + [-v for v in FITS if v])
def test_balance_column_round_trips_exact_integers(ledger_env, value):
    Balance.insert(account_id=999_999, asset="ETH", available=value, frozen=-value).execute()
    row = Balance.get((Balance.account_id == 999_999) & (Balance.asset == "ETH"))
    assert (row.available, row.frozen) == (value, -value)
    assert type(row.available) is int


@pytest.mark.parametrize("value", TOO_LARGE + [-v for v in TOO_LARGE])
def test_balance_column_refuses_what_does_not_fit_on_both_backends(ledger_env, value):
    with pytest.raises(ValueError):
        Balance.insert(account_id=999_999, asset="ETH", available=value, frozen=0).execute()
    assert Balance.select().where(Balance.account_id == 999_999).count() == 0


def test_strict_mariadb_refuses_an_out_of_range_amount_in_raw_sql(mysql_ledger_env):
    """The hot path writes amounts with raw SQL: strict sql_mode refuses instead of clamping to 10**65-1."""
    db = mysql_ledger_env.db
    for value in (AMOUNT_LIMIT, 2**255):
        with pytest.raises(peewee.DataError):
            db.execute_sql("INSERT INTO balance (account_id, asset, available, frozen) VALUES (1, 'ETH', %s, 0)",
                           (str(value),))
    assert Balance.select().where(Balance.account_id == 1).count() == 0


def test_posting_amounts_and_negative_system_balances_survive_a_reload(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    world = env.shards[alice.shard].system["world"]
    env.fund(alice, 2**215)
    env.fund(bob, 10**64 + 1)
    env.fund(alice, AMOUNT_LIMIT - 1 - 2**215)  # alice now holds the largest representable balance
    amounts = sorted(a for (a,) in Posting.select(Posting.amount).tuples())
    assert amounts == sorted([2**215, 10**64 + 1, AMOUNT_LIMIT - 1 - 2**215])
    reloaded = env.reload(alice.shard)
    assert reloaded.book.balance(alice.account_id, "ETH") == (AMOUNT_LIMIT - 1, 0)
    assert reloaded.book.balance(world, "ETH") == (-(AMOUNT_LIMIT - 1), 0)  # world paid for the credits
    assert db_balances([alice.account_id, bob.account_id, world]) == {
        alice.account_id: (AMOUNT_LIMIT - 1, 0), bob.account_id: (10**64 + 1, 0), world: (-(AMOUNT_LIMIT - 1), 0)}
    report = run_audit()
    assert report.ok, report.violations


def test_no_balance_may_reach_the_limit_on_either_side(ledger_env):
    env = ledger_env
    alice, carol, dave = env.open_account(), env.open_account(), env.open_account()
    # Fewest accounts first over two shards: alice and dave share one shard, so they share a world account.
    assert dave.shard == alice.shard != carol.shard
    env.fund(alice, AMOUNT_LIMIT - 1)
    before = row_counts()
    for target in (alice, dave):  # alice would go over +limit; for dave the world account would go under -limit
        reply = env.one(target.shard, m.Credit(unique_op(), target.account_id, "ETH", 1))
        assert isinstance(reply, BalanceOverflow) and reply.code == "balance_overflow"
    assert row_counts() == before
    assert env.shards[alice.shard].book.balance(alice.account_id, "ETH") == (AMOUNT_LIMIT - 1, 0)
    assert env.shards[dave.shard].book.balance(dave.account_id, "ETH") == (0, 0)
    env.fund(carol, 5)  # another shard's world account has its own room


@pytest.mark.parametrize("raw", TOO_LARGE + [AMOUNT_LIMIT + 1, str(AMOUNT_LIMIT), str(2**255), "9" * 66])
def test_parse_amount_rejects_values_at_or_above_the_limit(raw):
    with pytest.raises(InvalidAmount) as caught:
        parse_amount(raw)
    assert caught.value.code == "invalid_amount"


@pytest.mark.parametrize("raw", [0, -1, "0", "-5", "1.5", "1e18", " 1", "", "\u0663", True, 1.0, None, b"1"])
def test_parse_amount_rejects_what_is_not_a_positive_digit_string(raw):
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


def test_parse_amount_accepts_up_to_the_limit():
    assert parse_amount(str(AMOUNT_LIMIT - 1)) == AMOUNT_LIMIT - 1
    assert parse_amount(str(2**215)) == 2**215
    assert parse_amount(10**64 + 1) == 10**64 + 1
    check_amount(1)
    with pytest.raises(InvalidAmount):
        check_amount(AMOUNT_LIMIT)


@pytest.mark.parametrize("amount", TOO_LARGE)
def test_shard_rejects_an_amount_at_or_above_the_limit(ledger_env, amount):
    env = ledger_env
    alice = env.open_account()
    before = row_counts()
    reply = env.one(alice.shard, m.Credit(unique_op(), alice.account_id, "ETH", amount))
    assert isinstance(reply, InvalidAmount)
    assert row_counts() == before
