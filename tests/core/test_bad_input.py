"""Bad input at the money-core layer (router and shard actors, MariaDB + Redis): every bad command raises
its typed error with a stable code, and changes nothing: balances in memory and in the database, and the
rows of operation, posting and outbox, are as before."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import messages as m
from core.limits import OP_ID_MAX_LEN
from storage.models import Account, Balance
from core.errors import WalletError
from core.limits import AMOUNT_LIMIT

from tests.core.support import row_counts, unique_op
from tests.helpers import fund, register, wait_until

UNKNOWN = 10**9


def all_balances() -> dict[tuple[int, str], tuple[int, int]]:
    return {(a, s): (av, fr) for a, s, av, fr in Balance.select(
        Balance.account_id, Balance.asset, Balance.available, Balance.frozen).tuples()}


@pytest.fixture
def bank(systems):
    """alice (1000 ETH) and erin on one shard, bob on another; `send` injects a command into a shard."""
    system = systems()
    alice, bob, _, _, erin = (register(system, n) for n in ("alice", "bob", "carol", "dave", "erin"))
    assert alice.shard == erin.shard != bob.shard
    fund(system, alice.account_id, 1000)
    taken = m.Transfer("taken", alice.account_id, bob.account_id, bob.shard, "ETH", 10)
    assert system.router.command(taken).status == "in_transit"
    return system, alice, bob, erin


def bad_commands(alice, bob, erin, world):
    """(what, how to send it, expected code). Each sender is a callable that raises."""
    a, b, e = alice.account_id, bob.account_id, erin.account_id

    def xfer(amount=5, asset="ETH", to=e, to_shard=erin.shard, sender=a, op=None):
        return m.Transfer(op or unique_op("bad"), sender, to, to_shard, asset, amount)

    def withdraw(amount, fee=0):
        return m.RequestWithdrawal(unique_op("bad"), a, "ETH", "0x000000000000000000000000000000000000dEaD", amount,
                                   fee, "standard")

    cases = [
        ("unknown sender (router)", ("router", UNKNOWN, e, 5), "unknown_account"),
        ("unknown recipient (router)", ("router", a, UNKNOWN, 5), "unknown_account"),
        ("system account as recipient (router)", ("router", a, world, 5), "unknown_account"),
        ("unknown sender (shard)", xfer(sender=UNKNOWN), "unknown_account"),
        ("unknown recipient on the same shard", xfer(to=UNKNOWN), "unknown_account"),
        ("system account as recipient (shard)", xfer(to=world), "unknown_account"),
        ("unknown account credited", m.Credit(unique_op("bad"), UNKNOWN, "ETH", 5), "unknown_account"),
        ("unknown asset", xfer(asset="DOGE"), "unknown_asset"),
        ("asset is not a string", xfer(asset=None), "unknown_asset"),
        ("transfer to self", xfer(to=a, to_shard=alice.shard), "self_transfer"),
        ("insufficient balance", xfer(amount=991), "insufficient_funds"),
        ("insufficient balance to another shard", xfer(amount=991, to=b, to_shard=bob.shard), "insufficient_funds"),
        ("withdraw more than available with the fee", withdraw(900, fee=91), "insufficient_funds"),
        ("settle what is not open", m.SettleWithdrawal(unique_op("bad"), a, 10**9, "0x" + "ab" * 32, 1, 0, 1),
         "unknown_withdrawal"),
        ("negative fee", withdraw(5, fee=-1), "invalid_amount"),
        ("withdrawal amount 0", withdraw(0), "invalid_amount"),
        ("same op id, other content", xfer(op="taken", to=b, to_shard=bob.shard, amount=11), "idempotency_key_reused"),
        ("same op id, other command", m.Credit("taken", a, "ETH", 10), "idempotency_key_reused"),
        ("op id too long", xfer(op="o" * (OP_ID_MAX_LEN + 1)), "validation_error"),
        ("empty op id", m.Transfer("", a, e, erin.shard, "ETH", 5), "validation_error"),
    ]
    for amount in (0, -5, AMOUNT_LIMIT, 2**255, "5", 1.5, True, Decimal(5), None):
        cases.append((f"amount {amount!r}", xfer(amount=amount), "invalid_amount"))
    return cases


def test_bad_commands_raise_typed_errors_and_change_nothing(bank):
    system, alice, bob, erin = bank
    world = Account.get(Account.username == f"system:world:{alice.shard}").id
    people = (alice, bob, erin)
    memory_before = {p.account_id: system.router.balances(p.account_id) for p in people}
    db_before, rows_before = all_balances(), row_counts()
    for what, command, code in bad_commands(alice, bob, erin, world):
        with pytest.raises(WalletError) as caught:
            if isinstance(command, tuple):
                _, sender, recipient, amount = command
                system.router.transfer(unique_op("bad"), sender, recipient, "ETH", amount)
            else:
                system.router.ask_shard(alice.shard, command)
        assert caught.value.code == code, (what, caught.value)
        assert row_counts() == rows_before, what
        assert all_balances() == db_before, what
        assert {p.account_id: system.router.balances(p.account_id) for p in people} == memory_before, what


def test_bad_commands_in_a_batch_do_not_disturb_the_good_ones(bank):
    system, alice, bob, erin = bank
    ref = system.router.shard_ref(alice.shard)
    good = [m.Transfer(unique_op("ok"), alice.account_id, erin.account_id, erin.shard, "ETH", 1) for _ in range(20)]
    bad = [m.Transfer(unique_op("bad"), alice.account_id, erin.account_id, erin.shard, "DOGE", 1),
           m.Transfer(unique_op("bad"), alice.account_id, alice.account_id, alice.shard, "ETH", 1),
           m.Transfer(unique_op("bad"), alice.account_id, erin.account_id, erin.shard, "ETH", 10**6)]
    commands = [cmd for pair in zip(good, bad * 7) for cmd in pair]  # interleaved, one mailbox
    futures = [(cmd, ref.ask(cmd, block=False)) for cmd in commands]
    for cmd, future in futures:
        if cmd in good:
            assert future.get(timeout=30).status == "completed"
        else:
            with pytest.raises(WalletError):
                future.get(timeout=30)
    assert system.router.balances(alice.account_id)["ETH"] == (1000 - 10 - 20, 0)
    assert system.router.balances(erin.account_id)["ETH"] == (20, 0)


def test_the_longest_op_id_is_accepted_also_across_shards(bank):
    """The outbox derives the credit's id from the transfer's: the longest accepted id must still fit."""
    system, alice, bob, erin = bank
    same, cross = "o" * OP_ID_MAX_LEN, "p" * OP_ID_MAX_LEN
    assert system.router.transfer(same, alice.account_id, erin.account_id, "ETH", 1) == m.OpResult(same, "completed")
    assert system.router.transfer(same, alice.account_id, erin.account_id, "ETH", 1).replayed
    assert system.router.transfer(cross, alice.account_id, bob.account_id, "ETH", 2).status == "in_transit"
    wait_until(lambda: system.router.balances(bob.account_id)["ETH"] == (12, 0), what="credit with the longest id")
