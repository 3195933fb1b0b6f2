from __future__ import annotations

import pytest

from devnet.anvil import Anvil
from tests.reserves.support import Clock, open_reconciled_bank


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def bank(node, mysql_url, redis_prefix, clock):
    bank = open_reconciled_bank(node, mysql_url, redis_prefix, clock)
    yield bank
    bank.stop()
