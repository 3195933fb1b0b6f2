"""Reconciliation on real anvil, MariaDB and Redis: clean (drift 0, every line explained) after deposits,
transfers and withdrawals, also while a withdrawal is mined but not yet settled; drift caught within one
interval after a spend from the hot key behind the service's back, and after a deposit credited twice by a
corrupted row; `wallet reconcile` exits 0 when clean and 1 on drift."""

from __future__ import annotations

import json

from app.audit import run_audit
from storage.models import Deposit
from tests.reserves.support import (
    HOT_FLOAT_ETH, HOT_FLOAT_TOKENS, credit_a_copy, last_row, reconcile, run_cli, spend_from_hot_key,
    wait_for_interval_run,
)
from tests.withdrawals.support import ETH, N, RECIPIENT, TOKEN


def lines(row) -> dict[str, dict]:
    return {line["asset"]: line for line in json.loads(row.lines)}


def test_clean_after_deposits_transfers_and_withdrawals(bank):
    alice = bank.funded_user("alice", eth=3 * ETH, tokens=4_000_000)
    bob = bank.funded_user("bob", eth=ETH)
    summary = reconcile(bank)
    assert (summary.clean, summary.drift) == (True, ())
    eth = lines(last_row())["ETH"]
    assert (int(eth["liabilities"]), int(eth["float"]), int(eth["holdings"])) == (4 * ETH, HOT_FLOAT_ETH,
                                                                                  4 * ETH + HOT_FLOAT_ETH)
    assert int(lines(last_row())[TOKEN]["liabilities"]) == 4_000_000

    moved = bank.api.transfer(alice, "bob", str(ETH // 4))
    assert moved.status_code == 201, moved.json
    assert reconcile(bank).clean

    eth_wd = bank.requested(alice, ETH, speed="fast")
    token_wd = bank.requested(alice, 1_000_000, asset=TOKEN)
    assert reconcile(bank).clean  # frozen, nothing signed: still owed, still held
    for withdrawal in (eth_wd, token_wd):
        assert bank.approve(withdrawal["id"]).status_code == 200
    assert bank.sign().signed == 2
    bank.settle()  # the block holding them is recorded, the withdrawals are not settled yet
    assert (bank.status(eth_wd["id"]), bank.status(token_wd["id"])) == ("broadcast", "broadcast")
    summary = reconcile(bank)
    assert summary.clean, summary.drift
    row = lines(last_row())
    assert int(row[TOKEN]["in_flight"]) == 1_000_000 and int(row["ETH"]["in_flight"]) > ETH  # amount + gas

    bank.settle(blocks=N)
    assert (bank.status(eth_wd["id"]), bank.status(token_wd["id"])) == ("confirmed", "confirmed")
    summary = reconcile(bank)
    assert summary.clean, summary.drift
    row = lines(last_row())
    assert (row["ETH"]["in_flight"], row[TOKEN]["in_flight"]) == ("0", "0")
    assert int(row[TOKEN]["fees"]) == 2_000 and int(row[TOKEN]["holdings"]) == 4_000_000 - 1_000_000 + HOT_FLOAT_TOKENS
    assert bank.balance(bob) == (ETH + ETH // 4, 0)
    assert run_cli(bank, "reconcile").returncode == 0
    metrics = bank.api.ops.get("/metrics").get_data(as_text=True)
    assert "wallet_reconcile_clean 1.0" in metrics and 'wallet_reconcile_drift{asset="ETH"} 0.0' in metrics


def test_an_outside_spend_from_the_hot_key_is_drift_within_one_interval(bank, clock):
    bank.funded_user("carol", eth=2 * ETH)
    assert last_row() is None  # nothing runs before one interval has passed since start
    first = wait_for_interval_run(clock)
    assert first.clean, first.lines
    spend_from_hot_key(bank, ETH // 10, RECIPIENT)
    bank.settle(blocks=1)  # BlockWatch records the block: the reconciler reads the chain at its height
    row = wait_for_interval_run(clock)
    assert not row.clean
    drift = int(lines(row)["ETH"]["drift"])
    assert drift < -(ETH // 10) and drift > -(ETH // 10) - 10**16  # the amount and the gas it burnt
    assert int(lines(row)[TOKEN]["drift"]) == 0
    cli = run_cli(bank, "reconcile")
    assert cli.returncode == 1 and "DRIFT" in cli.stdout, cli.stdout + cli.stderr


def test_a_deposit_credited_twice_by_a_corrupted_row_is_drift(bank, clock):
    bank.funded_user("dave", eth=ETH)
    assert reconcile(bank).clean
    (deposit,) = Deposit.select().where(Deposit.asset == "ETH")
    credit_a_copy(bank, deposit)
    assert bank.router.balances(deposit.account_id)["ETH"] == (2 * ETH, 0)
    assert run_audit().ok  # the ledger alone is consistent: only the chain shows the double credit
    row = wait_for_interval_run(clock)
    assert not row.clean and int(lines(row)["ETH"]["drift"]) == -ETH
    metrics = bank.api.ops.get("/metrics").get_data(as_text=True)
    assert "wallet_reconcile_clean 0.0" in metrics and 'wallet_reconcile_drift{asset="ETH"} -1e+18' in metrics
    report = bank.admin("GET", "/reconciliation", as_="aude")
    assert report.status_code == 200 and report.json["clean"] is False
    assert report.json["lines"][0]["drift"] == str(-ETH)
    cli = run_cli(bank, "reconcile", "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout)["clean"] is False
