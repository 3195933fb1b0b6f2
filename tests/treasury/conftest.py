"""Fixtures of the treasury tests: a fresh anvil and the bank on it, with sweeps enabled."""

from __future__ import annotations

import pytest

from devnet.anvil import Anvil
from tests.treasury.support import SWEEP_MIN
from tests.withdrawals.support import open_bank


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
def bank(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, sweep_min=SWEEP_MIN)
    yield bank
    bank.stop()
