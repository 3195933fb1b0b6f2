"""Fixtures for the BlockWatch tests: a fresh anvil node, and a wallet watching it with the test token."""

from __future__ import annotations

import pytest

from tests.chain.deposits_support import Anvil, deploy_test_token, start_wallet


@pytest.fixture
def node():
    with Anvil() as anvil:
        yield anvil


@pytest.fixture
def wallet(node, mysql_url, redis_prefix):
    token = deploy_test_token(node.url)
    wallet = start_wallet(mysql_url, redis_prefix, [node.url], token)
    yield wallet
    wallet.stop()
