"""What the chain does to a withdrawal after it is signed, on real anvil: stuck (replaced with higher fees,
every hash kept, settled once; a bump that cannot fit under the cap is flagged, not sent), dropped (sent
again), reorged before it was final (waits, confirms again), reverted (fails and refunds once), and the hot
key used outside the service (flagged, funds kept frozen). The signer runs on a fake clock."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak

from app.audit import run_audit
from core.limits import REPLACE_BUMP_PER_MILLE
from storage import walletkeys
from storage.models import TxAttempt, Withdrawal
from tests.conftest import make_config
from tests.helpers import FakeClock
from tests.withdrawals.support import ETH, N, RECIPIENT, TOKEN, open_bank

START_MS = 1_800_000_000_000
REPLACE_AFTER_MS = 180_000


@pytest.fixture
def clock():
    return FakeClock(START_MS)


@pytest.fixture
def bank(node, mysql_url, redis_prefix, clock):
    bank = open_bank(node, mysql_url, redis_prefix, clock=clock, replace_after_ms=REPLACE_AFTER_MS)
    yield bank
    bank.stop()


def assert_audit_ok():
    report = run_audit()
    assert report.ok, report.violations


def signed_withdrawal(bank, user, amount=ETH // 10, **kwargs) -> int:
    accepted = bank.requested(user, amount, **kwargs)
    assert bank.approve(accepted["id"]).json["status"] == "approved"
    assert bank.sign().signed == 1
    return int(accepted["id"])


def attempts(withdrawal_id: int) -> list[TxAttempt]:
    return list(TxAttempt.select().where(TxAttempt.ref_id == withdrawal_id).order_by(TxAttempt.id))


def hot_key(bank) -> bytes:
    return make_config("sqlite:///unused").key_ring().open(walletkeys.load_sealed("hot"))


def test_a_stuck_withdrawal_is_replaced_with_higher_fees_and_settles_once(bank, clock):
    alice = bank.funded_user("alice", eth=ETH)
    bank.fund_hot_wallet(eth=ETH)
    bank.node.set_automine(False)
    wid = signed_withdrawal(bank, alice)
    first = attempts(wid)
    assert [a.status for a in first] == ["broadcast"]
    clock.advance(REPLACE_AFTER_MS - 1)
    bank.sign()
    assert len(attempts(wid)) == 1  # not due yet
    clock.advance(1)
    bank.sign()
    clock.advance(2 * REPLACE_AFTER_MS)  # the wait doubles
    bank.sign()
    chain = attempts(wid)
    assert [a.kind for a in chain] == ["original", "replacement", "replacement"]
    assert len({a.nonce for a in chain}) == 1 and len({a.tx_hash for a in chain}) == 3
    cap = bank.wallet.system.config.gas_price_cap_wei
    for old, new in zip(chain, chain[1:]):
        assert new.max_fee_per_gas * 1000 >= old.max_fee_per_gas * (1000 + REPLACE_BUMP_PER_MILLE)
        assert new.max_priority_fee_per_gas * 1000 >= old.max_priority_fee_per_gas * (1000 + REPLACE_BUMP_PER_MILLE)
        assert new.max_fee_per_gas <= cap
    user_hashes = bank.detail(alice, str(wid))["hashes"]
    assert user_hashes == [a.tx_hash for a in chain]
    bank.node.mine(1)
    bank.settle(blocks=N - 1)
    assert bank.status(wid) == "confirmed"
    statuses = sorted(a.status for a in attempts(wid))
    assert statuses == ["mined", "replaced", "replaced"]
    winner = next(a for a in attempts(wid) if a.status == "mined")
    assert Withdrawal.get_by_id(wid).tx_hash == winner.tx_hash
    assert bank.chain_balance(RECIPIENT) == ETH // 10  # paid once
    assert_audit_ok()


def test_a_bump_that_cannot_fit_under_the_cap_is_flagged_not_sent(node, mysql_url, redis_prefix, clock):
    bank = open_bank(node, mysql_url, redis_prefix, clock=clock, replace_after_ms=REPLACE_AFTER_MS,
                     gas_price_cap_gwei=2)
    try:
        alice = bank.funded_user("alice", eth=ETH)
        bank.fund_hot_wallet(eth=ETH)
        node.set_automine(False)
        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(10 * 10**9)])  # the market is far above the cap
        node.mine(1)
        wid = signed_withdrawal(bank, alice)
        (first,) = attempts(wid)
        assert first.max_fee_per_gas == 2 * 10**9  # signed at the cap, never above
        clock.advance(REPLACE_AFTER_MS)
        bank.sign()
        assert len(attempts(wid)) == 1  # no attempt above the cap was signed
        row = Withdrawal.get_by_id(wid)
        assert row.needs_operator and "gas price cap" in row.operator_reason
        assert row.status == "signed"  # the node never took a transaction under its base fee
        assert bank.balance(alice)[1] == row.amount + row.fee  # still frozen
        assert_audit_ok()
    finally:
        bank.stop()


def test_a_dropped_transaction_is_sent_again(bank):
    alice = bank.funded_user("alice", eth=ETH)
    bank.fund_hot_wallet(eth=ETH)
    bank.node.set_automine(False)
    wid = signed_withdrawal(bank, alice)
    (attempt,) = attempts(wid)
    bank.node.rpc("anvil_dropTransaction", [attempt.tx_hash])
    assert bank.node.rpc("eth_getTransactionByHash", [attempt.tx_hash]) is None
    bank.sign()
    assert bank.node.rpc("eth_getTransactionByHash", [attempt.tx_hash]) is not None  # the same bytes again
    assert len(attempts(wid)) == 1
    bank.node.mine(1)
    bank.settle(blocks=N - 1)
    assert bank.status(wid) == "confirmed"
    assert_audit_ok()


def test_a_reorg_over_a_receipt_not_yet_final_keeps_it_waiting_until_it_confirms_again(bank):
    alice = bank.funded_user("alice", eth=ETH)
    bank.fund_hot_wallet(eth=ETH)
    wid = signed_withdrawal(bank, alice)  # automine: in a block at once
    bank.settle(blocks=1)  # two confirmations of N
    assert bank.status(wid) == "broadcast"
    bank.node.reorg(2)  # the two newest blocks replaced, without our transaction
    bank.settle()
    (attempt,) = attempts(wid)
    assert bank.detail(alice, str(wid))["confirmations"] == 0
    bank.sign()  # the node lost it: the same bytes again (anvil mines them at once)
    assert len(attempts(wid)) == 1
    bank.settle(blocks=N - 1)
    assert bank.status(wid) == "confirmed"
    assert Withdrawal.get_by_id(wid).tx_hash == attempt.tx_hash
    assert bank.chain_balance(RECIPIENT) == ETH // 10
    assert_audit_ok()


def test_a_reverted_token_transfer_fails_and_refunds_once(bank):
    bob = bank.funded_user("bob", tokens=5_000_000)
    bank.fund_hot_wallet(eth=ETH, tokens=3_000_000)
    bank.node.set_automine(False)
    wid = signed_withdrawal(bank, bob, 1_000_000, asset=TOKEN)
    # The hot wallet's tokens vanish before the block (slot 4 is balanceOf in TestToken): the transfer reverts.
    slot = keccak(bytes(12) + bytes.fromhex(bank.hot[2:]) + (4).to_bytes(32, "big"))
    bank.node.rpc("anvil_setStorageAt", [bank.wallet.token, "0x" + slot.hex(), "0x" + "00" * 32])
    bank.node.mine(1)
    bank.settle(blocks=N - 1)
    row = Withdrawal.get_by_id(wid)
    assert row.status == "failed" and row.needs_operator and "reverted" in row.operator_reason
    assert bank.balance(bob, TOKEN) == (5_000_000, 0)  # amount + fee back, once
    bank.settle(blocks=2)
    assert bank.balance(bob, TOKEN) == (5_000_000, 0)
    assert row.gas_paid > 0
    assert_audit_ok()


def test_the_hot_key_used_outside_the_service_is_flagged_and_funds_stay_frozen(bank):
    alice = bank.funded_user("alice", eth=ETH)
    bank.fund_hot_wallet(eth=ETH)
    bank.node.set_automine(False)
    wid = signed_withdrawal(bank, alice)
    row = Withdrawal.get_by_id(wid)
    (ours,) = attempts(wid)
    # Someone with the hot key replaces our transaction in the pool: same nonce, higher fees.
    foreign = Account.sign_transaction({
        "type": 2, "chainId": 31337, "nonce": row.nonce, "to": "0x" + "42" * 20, "value": 1, "gas": 21_000,
        "maxFeePerGas": 3 * ours.max_fee_per_gas, "maxPriorityFeePerGas": 3 * ours.max_priority_fee_per_gas},
        hot_key(bank))
    bank.node.rpc("eth_sendRawTransaction", ["0x" + bytes(foreign.raw_transaction).hex()])
    bank.node.mine(1)
    bank.sign()
    row = Withdrawal.get_by_id(wid)
    assert row.needs_operator and "none of ours" in row.operator_reason
    assert row.status == "broadcast"  # never failed or refunded by itself
    assert bank.balance(alice)[1] == row.amount + row.fee
    bank.settle(blocks=N)
    assert bank.status(wid) == "broadcast"
    assert_audit_ok()
