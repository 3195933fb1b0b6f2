"""Reorgs on a real anvil node (evm_snapshot/evm_revert and anvil_reorg): deposits reorged out before
crediting are never credited, re-included ones are credited exactly once, and a reorg deeper than the
confirmation depth after crediting is flagged, alerted and puts the account on hold."""

from __future__ import annotations

import logging

import pytest

from storage.models import Operation
from tests.chain.anvil import rpc, send_eth, sign_tx, token_transfer
from tests.chain.deposits_support import DEV_KEYS, N, TOKEN, Anvil, deploy_test_token, deposit_rows, on_hold, start_wallet
from wallet.audit import run_audit

ETH = 10**18


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


def signed_deposit(node: Anvil, to: str, amount: int, key: str = DEV_KEYS[0]) -> tuple[str, str]:
    return sign_tx(node.url, key, to=to, value=amount, gas=21_000)


def test_deposit_reverted_before_crediting_is_orphaned_and_never_credited(node, wallet):
    alice, address = wallet.user("alice")
    snapshot = node.snapshot()
    raw, tx_hash = signed_deposit(node, address, ETH)
    rpc(node.url, "eth_sendRawTransaction", [raw])  # automine: its own block
    node.mine(N - 2)  # N-1 confirmations
    wallet.scan_clean()
    assert [d.status for d in deposit_rows()] == ["pending"]

    assert node.revert(snapshot)
    node.mine(5)  # a longer chain without the deposit
    report = wallet.scan_clean()
    assert report.reorgs == 1
    [row] = deposit_rows()
    assert (row.status, row.tx_hash) == ("orphaned", tx_hash)
    node.mine(N + 2)
    wallet.scan_clean()
    assert wallet.balance(alice.account_id) == 0
    assert wallet.api_deposits(alice)[0]["status"] == "orphaned"
    assert wallet.api_deposits(alice)[0]["confirmations"] == 0
    assert not Operation.select().where(Operation.op_id.startswith("d:")).exists()


def test_deposit_reincluded_in_another_block_is_credited_once(node, wallet):
    alice, address = wallet.user("alice")
    bob, bob_address = wallet.user("bob")
    snapshot = node.snapshot()
    raw, tx_hash = signed_deposit(node, address, ETH)
    rpc(node.url, "eth_sendRawTransaction", [raw])
    token_tx = token_transfer(node.url, wallet.token, DEV_KEYS[1], bob_address, 4242)
    first_block = deposit_block = int(rpc(node.url, "eth_getTransactionReceipt", [tx_hash])["blockNumber"], 16)
    wallet.scan_clean()

    assert node.revert(snapshot)
    node.mine(2)
    rpc(node.url, "eth_sendRawTransaction", [raw])  # the same signed transaction, now in a later block
    token_transfer(node.url, wallet.token, DEV_KEYS[1], bob_address, 4243)  # another tx: a new deposit
    deposit_block = int(rpc(node.url, "eth_getTransactionReceipt", [tx_hash])["blockNumber"], 16)
    assert deposit_block != first_block
    report = wallet.scan_clean()
    assert report.reorgs == 1
    [eth] = deposit_rows(asset="ETH")
    assert (eth.status, eth.block_number) == ("pending", deposit_block)
    assert [r.status for r in deposit_rows(asset=TOKEN, tx_hash=token_tx)] == ["orphaned"]

    node.mine(N)
    wallet.scan_clean()
    assert wallet.balance(alice.account_id) == ETH
    assert wallet.balance(bob.account_id, TOKEN) == 4243  # the replacement, not the orphaned transfer
    assert deposit_rows(asset="ETH")[0].status == "confirmed"
    assert Operation.select().where(Operation.op_id.startswith("d:")).count() == 2
    assert run_audit().ok


def test_anvil_reorg_moving_a_deposit_to_another_block_keeps_its_identity(node, wallet):
    alice, address = wallet.user("alice")
    node.set_automine(False)
    raw, tx_hash = signed_deposit(node, address, 3 * ETH)
    rpc(node.url, "eth_sendRawTransaction", [raw])
    node.mine(1)
    node.mine(1)
    wallet.scan_clean()
    node.reorg(2, [(raw, 1)])  # the same tx in the second block of the new branch
    node.mine(N)
    report = wallet.scan_clean()
    assert report.reorgs == 1
    [row] = deposit_rows()
    assert row.status == "confirmed"
    assert wallet.balance(alice.account_id) == 3 * ETH


def test_reorg_deeper_than_confirmations_after_credit_is_flagged_and_holds_the_account(node, wallet, caplog):
    alice, address = wallet.user("alice")
    bob, _ = wallet.user("bob")
    send_eth(node.url, DEV_KEYS[0], address, 2 * ETH)
    node.mine(N)
    wallet.scan_clean()
    assert wallet.balance(alice.account_id) == 2 * ETH

    with caplog.at_level(logging.CRITICAL, logger="chain.watcher"):
        node.reorg(N + 2)  # replaces the deposit's block and those above it
        node.mine(1)
        report = wallet.scan_clean()
    assert report.reorgs == 1
    [row] = deposit_rows()
    assert row.status == "reorged_after_credit" and row.held_at is not None
    assert any("reorged out" in r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL)
    assert on_hold(alice.account_id)
    assert wallet.balance(alice.account_id) == 2 * ETH  # the ledger is never changed silently
    assert wallet.stats()["reorged_after_credit"] == 1

    response = wallet.api.transfer(alice, bob.username, amount="1")
    assert response.status_code == 423 and response.json["code"] == "account_on_hold"
    assert wallet.api_deposits(alice)[0]["status"] == "reorged_after_credit"
    node.mine(N)
    wallet.scan_clean()
    assert Operation.select().where(Operation.op_id.startswith("d:")).count() == 1
    assert run_audit().ok
