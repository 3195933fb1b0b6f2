"""Reconciliation stays clean through sweeps (treasury/sweeps.py): custody moves between our own addresses, and
the gas they burn is explained as in flight from the moment it is mined until it is booked to `fees`."""

from __future__ import annotations

import json

import pytest

from devnet.anvil import Anvil
from storage.models import Sweep
from tests.reserves.support import Clock, last_row, open_reconciled_bank, reconcile
from tests.treasury.support import ETH, SWEEP_MIN, TOKEN, deposit_many, fund_gas_wallet, run_until_final

GAS_FLOAT = ETH


@pytest.fixture
def sweeping_bank(mysql_url, redis_prefix):
    with Anvil() as node:
        bank = open_reconciled_bank(node, mysql_url, redis_prefix, Clock(), gas_float_eth=GAS_FLOAT,
                                    sweep_min=SWEEP_MIN)
        try:
            yield bank
        finally:
            bank.stop()


def eth_line() -> dict:
    return next(line for line in json.loads(last_row().lines) if line["asset"] == "ETH")


def test_clean_before_during_and_after_eth_and_token_sweeps(sweeping_bank):
    bank = sweeping_bank
    deposit_many(bank, [ETH // 10, ETH // 5, ETH // 3], [1_000_000, 2_000_000])
    fund_gas_wallet(bank, GAS_FLOAT)
    bank.settle()
    assert reconcile(bank).clean
    bank.sign()  # top-ups and ETH sweeps signed and mined (anvil mines at once); nothing final yet
    bank.settle()  # BlockWatch records the blocks: the reconciliation's height now covers them
    assert Sweep.select().where(Sweep.status.in_(("confirmed", "failed"))).count() == 0
    summary = reconcile(bank)
    assert summary.clean, summary.drift
    assert int(eth_line()["in_flight"]) > 0  # gas mined, not yet booked
    run_until_final(bank)
    assert Sweep.select().where(Sweep.status == "confirmed").count() == 5
    bank.settle()
    summary = reconcile(bank)
    assert summary.clean, summary.drift
    line = eth_line()
    assert line["in_flight"] == "0" and int(line["fees"]) < 0  # the gas, booked: fees paid it
    token = next(line for line in json.loads(last_row().lines) if line["asset"] == TOKEN)
    assert token["drift"] == "0" and int(token["liabilities"]) == 3_000_000
