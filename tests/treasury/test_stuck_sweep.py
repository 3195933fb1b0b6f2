"""A stuck sweep (its fee under the base fee: sweeps wait for cheap gas) holds up no withdrawal: they sign on the
hot wallet's lane and confirm on time while the sweep waits on its deposit address's lane; once gas is cheap
again the same sweep goes through, once."""

from __future__ import annotations

from app.audit import run_audit
from storage.models import Sweep, TxAttempt
from tests.treasury.support import SWEEP_MIN, deposit_many, run_until_final
from tests.withdrawals.support import ETH, N, RECIPIENT, open_bank

GWEI = 10**9
BUSY_BASE_FEE = 20 * GWEI  # what the chain charges while the sweep is stuck
SWEEP_CAP_GWEI = 1  # the most a sweep pays


def busy_blocks(node, count: int) -> None:
    """Blocks whose base fee stays above what the sweep offers."""
    for _ in range(count):
        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(BUSY_BASE_FEE)])
        node.mine(1)


def test_withdrawals_confirm_while_a_sweep_is_stuck(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, sweep_min=SWEEP_MIN, sweep_gas_price_cap_gwei=SWEEP_CAP_GWEI,
                     withdraw_auto_approve_below=(("ETH", ETH),))
    try:
        (_, address), = deposit_many(bank, [ETH // 2], [])
        alice = bank.funded_user("alice", eth=ETH)
        bank.fund_hot_wallet(eth=2 * ETH)
        busy_blocks(node, 2)

        bank.sign()  # the sweep is signed at its cap, under the base fee: no block takes it
        sweep = Sweep.get()
        attempt = TxAttempt.get((TxAttempt.purpose == "sweep") & (TxAttempt.ref_id == sweep.id))
        assert int(attempt.max_fee_per_gas) == SWEEP_CAP_GWEI * GWEI < BUSY_BASE_FEE

        confirmed = []
        for i in range(3):  # withdrawals keep flowing, each final after N blocks
            accepted = bank.requested(alice, ETH // 10)
            assert accepted["status"] == "approved"
            bank.sign()
            busy_blocks(node, N)
            bank.wallet.scan_clean()
            assert bank.status(accepted["id"]) == "confirmed"
            confirmed.append(accepted["id"])
            assert Sweep.get_by_id(sweep.id).status in ("signed", "broadcast")
            assert bank.node.rpc("eth_getTransactionReceipt", [attempt.tx_hash]) is None
        assert bank.chain_balance(RECIPIENT) == 3 * ETH // 10
        assert bank.chain_balance(address) == ETH // 2  # nothing left the deposit address yet

        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI // 10)])  # gas is cheap again
        run_until_final(bank)
        sweep = Sweep.get_by_id(sweep.id)
        assert sweep.status == "confirmed" and bank.chain_balance(address) == 0
        assert Sweep.select().where(Sweep.from_address == address).count() == 1  # the same sweep, once
        report = run_audit()
        assert report.ok, report.violations
    finally:
        bank.stop()
