"""Sweeps and the reconciliation together (real anvil, MariaDB, Redis): a move's value stays on our addresses,
its gas leaves them before `fees` hears of it (booked when the move is final), so the reconciliation counts the
gas of mined, unbooked moves as in flight and stays clean before, during and after a round of sweeps."""

from __future__ import annotations

import json

from app.audit import run_audit
from core import messages as m
from storage.models import Operation, Reconciliation, Sweep
from tests.treasury.support import ETH, SWEEP_MIN, TOKEN, deposit_many, fund_gas_wallet, run_until_final
from tests.withdrawals.support import open_bank

GAS_FLOAT = ETH  # the gas wallet's money, put in from outside: the operator's, owed to nobody


def reconcile(bank) -> tuple[m.ReconcileSummary, dict]:
    summary = bank.router.ask_actor("reconciler", m.RunReconcile(), timeout=60)
    assert summary.error is None, summary.error
    row = Reconciliation.get_by_id(summary.reconciliation_id)
    return summary, {line["asset"]: line for line in json.loads(row.lines)}


def test_reconciliation_is_clean_before_during_and_after_sweeps(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, sweep_min=SWEEP_MIN, reconcile_float=(("ETH", GAS_FLOAT),))
    try:
        deposit_many(bank, [ETH // 10, ETH // 5], [1_000_000, 2_000_000])
        fund_gas_wallet(bank, GAS_FLOAT)
        bank.settle(1)
        summary, _ = reconcile(bank)
        assert (summary.clean, summary.drift) == (True, ())

        bank.sign()  # ETH sweeps and token top-ups signed and sent (automine: mined at once)
        bank.settle(1)  # BlockWatch's height passes them; nothing is final, no gas is booked yet
        assert Sweep.select().where(Sweep.status.in_(("topup", "signed", "broadcast"))).count() == 4
        assert not Operation.select().where(Operation.op_id.startswith("sw:")).exists()
        summary, lines = reconcile(bank)
        assert (summary.clean, summary.drift) == (True, ()), lines
        assert int(lines["ETH"]["in_flight"]) > 0  # the burnt gas, explained

        run_until_final(bank)
        assert Operation.select().where(Operation.op_id.startswith("sw:")).count() == 4
        summary, lines = reconcile(bank)
        assert (summary.clean, summary.drift) == (True, ()), lines
        assert int(lines["ETH"]["in_flight"]) == 0 and int(lines[TOKEN]["in_flight"]) == 0
        assert run_audit().ok
    finally:
        bank.stop()
