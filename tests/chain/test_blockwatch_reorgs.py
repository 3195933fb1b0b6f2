"""Reorgs on a real anvil node (evm_snapshot/evm_revert and anvil_reorg): deposits reorged out before
crediting are never credited, re-included ones are credited exactly once, and a reorg deeper than the
confirmation depth after crediting is flagged, alerted and puts the account on hold."""

from __future__ import annotations

import logging

from eth_abi import encode
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector

from storage.models import Operation
from devnet.anvil import rpc, send_eth, sign_tx, token_transfer
from tests.chain.deposits_support import DEV_KEYS, N, TOKEN, Anvil, deposit_rows, on_hold
from app.audit import run_audit

ETH = 10**18


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

    with caplog.at_level(logging.CRITICAL, logger="blockwatch.watcher"):
        node.reorg(N + 2)  # replaces the deposit's block and those above it
        node.mine(1)
        report = wallet.scan_clean()
    assert report.reorgs == 1
    [row] = deposit_rows()
    assert row.status == "reorged_after_credit" and row.held_at is not None
    assert any("reorged out" in r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL)
    assert on_hold(alice.account_id)
    assert wallet.balance(alice.account_id) == 2 * ETH  # the ledger is never changed silently
    assert wallet.stats().reorged_after_credit == 1

    response = wallet.api.transfer(alice, bob.username, amount="1")
    assert response.status_code == 423 and response.json["code"] == "account_on_hold"
    assert wallet.api_deposits(alice)[0]["status"] == "reorged_after_credit"
    node.mine(N)
    wallet.scan_clean()
    assert Operation.select().where(Operation.op_id.startswith("d:")).count() == 1
    assert run_audit().ok


def _signed_token_transfer(node: Anvil, token: str, key: str, to: str, amount: int, gas_price: int) -> tuple[str, str]:
    data = "0x" + (function_signature_to_4byte_selector("transfer(address,uint256)")
                   + encode(["address", "uint256"], [to, amount])).hex()
    nonce = int(rpc(node.url, "eth_getTransactionCount", [Account.from_key(key).address, "pending"]), 16)
    signed = Account.sign_transaction({"chainId": node.chain_id, "nonce": nonce, "gas": 100_000, "gasPrice": gas_price,
                                       "to": token, "value": 0, "data": data}, key)
    return "0x" + signed.raw_transaction.hex(), "0x" + signed.hash.hex()


def test_token_deposit_reincluded_at_another_log_index_keeps_its_identity(node, wallet):
    alice, address = wallet.user("alice")
    node.set_automine(False)
    gas_price = 2 * int(rpc(node.url, "eth_gasPrice"), 16)
    raw, tx_hash = _signed_token_transfer(node, wallet.token, DEV_KEYS[1], address, 777, gas_price)
    rpc(node.url, "eth_sendRawTransaction", [raw])
    node.mine(2)
    wallet.scan_clean()
    [first] = deposit_rows()
    assert (first.status, first.log_index) == ("pending", 0)

    # the new branch has another transfer ahead of the same deposit, in the same block
    other, _ = _signed_token_transfer(node, wallet.token, DEV_KEYS[2], address, 888, gas_price)
    node.reorg(2, [(other, 0), (raw, 0)])
    receipt = rpc(node.url, "eth_getTransactionReceipt", [tx_hash])
    assert int(receipt["logs"][0]["logIndex"], 16) == 1, "the deposit moved to log index 1"
    node.mine(N)
    assert wallet.scan_clean().reorgs == 1
    rows = {r.amount: r for r in deposit_rows()}
    assert (rows[777].status, rows[777].log_index, rows[777].id) == ("confirmed", 0, first.id)
    assert rows[888].status == "confirmed"
    assert wallet.balance(alice.account_id, TOKEN) == 777 + 888
    assert Operation.select().where(Operation.op_id.startswith("d:")).count() == 2
