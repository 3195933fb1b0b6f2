"""Sweeps on a real anvil and MariaDB: many deposit addresses (ETH and token) end in the hot wallet, the gas
wallet pays exactly the top-ups, nobody's balance moves, the gas is booked to `fees`, `wallet audit` is clean."""

from __future__ import annotations

import logging

from app.audit import run_audit
from storage.pool import load_pool_sealed
from tests.conftest import make_config
from ledger.accounts import system_username
from storage.models import Account, Balance, Sweep, TxAttempt
from treasury import switches
from storage import stafflog
from tests.treasury.support import (
    ETH, TOKEN, deposit_many, eth_balance, fund_gas_wallet, mined_attempts, receipt_gas, run_until_final,
)

ETH_DEPOSITS = [ETH // 10 + i * 10**15 for i in range(6)]
TOKEN_DEPOSITS = [1_000_000 + i for i in range(6)]


def fees_eth() -> int:
    fees = Account.get(Account.username == system_username("fees", 0))
    row = Balance.get_or_none((Balance.account_id == fees.id) & (Balance.asset == "ETH"))
    return 0 if row is None else int(row.available)


def test_eth_and_token_sweeps_move_custody_only(bank):
    users = deposit_many(bank, ETH_DEPOSITS, TOKEN_DEPOSITS)
    gas = fund_gas_wallet(bank)
    hot_eth0, hot_tkn0, gas0 = bank.chain_balance(bank.hot), bank.chain_balance(bank.hot, TOKEN), eth_balance(
        bank.node.url, gas)
    before = {user.account_id: bank.router.balances(user.account_id) for user, _ in users}

    run_until_final(bank)

    sweeps = list(Sweep.select().order_by(Sweep.id))
    assert sorted((s.kind, s.status) for s in sweeps) == sorted([("eth", "confirmed")] * 6 + [("token", "confirmed")] * 6)
    # every deposit address is empty of what it received: ETH to the last wei, tokens entirely
    for _, address in users[:6]:
        assert bank.chain_balance(address) == 0
    for _, address in users[6:]:
        assert bank.chain_balance(address, TOKEN) == 0
    eth_sweep_gas = sum(receipt_gas(bank, s.tx_hash) for s in sweeps if s.kind == "eth")
    assert bank.chain_balance(bank.hot) - hot_eth0 == sum(ETH_DEPOSITS) - eth_sweep_gas
    assert bank.chain_balance(bank.hot, TOKEN) - hot_tkn0 == sum(TOKEN_DEPOSITS)
    # the gas wallet paid the top-ups (each exactly its token transfer's gas limit × fee) and their own gas
    topups = mined_attempts("gas_topup")
    assert len(topups) == 6
    assert gas0 - eth_balance(bank.node.url, gas) == sum(int(t.value) + receipt_gas(bank, t.tx_hash) for t in topups)
    for topup in topups:
        main = TxAttempt.get((TxAttempt.purpose == "sweep") & (TxAttempt.ref_id == topup.ref_id)
                             & (TxAttempt.status == "mined"))
        assert int(topup.value) == main.gas_limit * int(main.max_fee_per_gas)
    # custody moved, money did not: balances unchanged, the top-ups were not credited as deposits
    bank.settle(3)
    assert {user.account_id: bank.router.balances(user.account_id) for user, _ in users} == before
    burnt = sum(int(s.gas_paid) for s in sweeps)
    assert burnt == eth_sweep_gas + sum(receipt_gas(bank, s.tx_hash) for s in sweeps if s.kind == "token") + sum(
        receipt_gas(bank, t.tx_hash) for t in topups)
    assert fees_eth() == -burnt
    report = run_audit()
    assert report.ok, report.violations

    # nothing new deposited: the next ticks sweep nothing again
    bank.sign()
    assert Sweep.select().count() == 12

    # the audit ties each move's gas to its booking: a changed row is caught
    first = sweeps[0]
    Sweep.update(gas_paid=int(first.gas_paid) + 1).where(Sweep.id == first.id).execute()
    report = run_audit()
    assert report.violations == [f"treasury move {first.id} burnt {int(first.gas_paid) + 1} wei of gas but "
                                 f"{int(first.gas_paid)} is booked to fees"]


def test_below_the_minimum_is_left_and_pause_holds_sweeps(bank, caplog):
    deposit_many(bank, [10**14], [])  # under the ETH minimum of 10**15
    fund_gas_wallet(bank)
    bank.sign()
    assert Sweep.select().count() == 0

    caplog.set_level(logging.DEBUG)
    ((_, address),) = deposit_many(bank, [ETH // 10], [], prefix="b")
    assert bank.admin("POST", "/sweeps/pause", as_="rita").status_code == 403  # a reviewer may not
    response = bank.admin("POST", "/sweeps/pause", as_="otto", json={"reason": "audit"})
    assert response.status_code == 200 and response.json["changed"] is True
    assert switches.engaged(Sweep._meta.database, switches.SWEEPS_PAUSED)
    assert bank.admin("GET", "/hot-wallet").json["sweeps_paused"] is True
    bank.sign()
    assert Sweep.select().count() == 0
    assert [e.action for e in stafflog.history("switch:sweeps_paused")] == ["sweeps_paused.engage"]
    assert bank.admin("POST", "/sweeps/resume", as_="otto").json == {"sweeps_paused": False, "changed": True}
    run_until_final(bank)
    assert [(s.kind, s.status) for s in Sweep.select()] == [("eth", "confirmed")]
    listed = bank.admin("GET", "/sweeps?kind=eth", as_="aude").json["sweeps"]
    assert [(s["kind"], s["status"], len(s["attempts"])) for s in listed] == [("eth", "confirmed", 1)]
    # the deposit address's key was opened to sign, and is in no log line
    key = make_config("sqlite:///unused").key_ring().open(load_pool_sealed(address))
    assert caplog.records and key.hex() not in caplog.text and key.hex().upper() not in caplog.text


def test_a_token_sweep_waits_for_a_gas_wallet_that_cannot_pay(bank, caplog):
    users = deposit_many(bank, [], [3_000_000])
    with caplog.at_level(logging.WARNING, logger="treasury.sweeps"):
        bank.sign()  # the gas wallet holds nothing: no top-up is signed that would stall its lane
    assert Sweep.select().count() == 0
    assert any("gas wallet cannot pay" in r.getMessage() for r in caplog.records)
    fund_gas_wallet(bank, ETH // 100)
    run_until_final(bank)
    assert [(s.kind, s.status) for s in Sweep.select()] == [("token", "confirmed")]
    assert bank.chain_balance(users[0][1], TOKEN) == 0
