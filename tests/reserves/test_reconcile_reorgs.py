"""Reconciliation across reorgs (anvil evm_snapshot/evm_revert): a deposit seen but not credited is explained as
pending, then simply gone once reorged out, and clean again when re-included and credited; a reorg deeper than
the confirmations that removes a credited deposit is a real shortfall, and the reconciliation says so."""

from __future__ import annotations

import json

from devnet.anvil import DEV_KEYS, rpc, sign_tx
from storage.models import Deposit
from tests.reserves.support import last_row, reconcile
from tests.withdrawals.support import ETH, N


def eth_line() -> dict:
    return next(line for line in json.loads(last_row().lines) if line["asset"] == "ETH")


def test_a_reorged_pending_deposit_stays_explained_and_a_credit_reorged_out_is_drift(bank):
    carol, address = bank.wallet.user("carol")
    bank.settle()
    before = bank.node.snapshot()
    raw, tx_hash = sign_tx(bank.node.url, DEV_KEYS[0], to=address, value=ETH, gas=21_000)
    rpc(bank.node.url, "eth_sendRawTransaction", [raw])
    bank.settle(blocks=N - 2)  # N - 1 confirmations: seen, not credited
    assert [d.status for d in Deposit.select()] == ["pending"]
    assert reconcile(bank).clean and int(eth_line()["pending"]) == ETH

    assert bank.node.revert(before)
    bank.settle(blocks=5)  # a longer branch without it
    assert [d.status for d in Deposit.select()] == ["orphaned"]
    assert reconcile(bank).clean and eth_line()["pending"] == "0"

    deep = bank.node.snapshot()
    rpc(bank.node.url, "eth_sendRawTransaction", [raw])  # re-included, then credited
    bank.settle(blocks=N)
    assert Deposit.get(Deposit.status == "confirmed").tx_hash == tx_hash
    assert bank.balance(carol) == (ETH, 0)
    assert reconcile(bank).clean and int(eth_line()["liabilities"]) == ETH

    assert bank.node.revert(deep)  # deeper than the confirmations: the credited deposit is gone
    bank.settle(blocks=N + 3)
    assert Deposit.get(Deposit.tx_hash == tx_hash, Deposit.status != "orphaned").status == "reorged_after_credit"
    summary = reconcile(bank)
    assert not summary.clean and dict(summary.drift) == {"ETH": -ETH}  # owed, and no longer on chain
