"""The in-process EVM chain behind JSON-RPC over HTTP: what the block watcher sees in embedded mode."""

from __future__ import annotations

import pytest
import requests
from eth_account import Account

from chain.embedded import EmbeddedChain
from tests.helpers import wait_until

LOG_TOPIC = "0x" + "ab" * 32
# Init code that emits LOG1(topic=LOG_TOPIC, no data) and deploys empty code:
# PUSH32 topic, PUSH1 0 (size), PUSH1 0 (offset), LOG1, STOP.
EMIT_LOG_INIT_CODE = bytes.fromhex("7f" + "ab" * 32 + "6000" + "6000" + "a1" + "00")


@pytest.fixture(scope="module")
def chain():
    with EmbeddedChain(block_interval_s=0.2) as running:
        yield running


@pytest.fixture(scope="module")
def manual_chain():
    """No timer: blocks are sealed only by mine(), so "pending until the next block" is checkable."""
    with EmbeddedChain(block_interval_s=0) as running:
        yield running


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def rpc(session, chain, method, *params):
    body = session.post(chain.url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": list(params)},
                        timeout=10).json()
    assert body["id"] == 7 and body["jsonrpc"] == "2.0"
    if "error" in body:
        raise RuntimeError(body["error"])
    return body["result"]


def wait_receipt(session, chain, tx_hash, timeout_s=15.0):
    return wait_until(lambda: rpc(session, chain, "eth_getTransactionReceipt", tx_hash), timeout_s=timeout_s,
                      interval_s=0.05, what=f"{tx_hash} mined")


def sign(key, chain, session, nonce, to, value):
    tx = {"type": 2, "chainId": chain.chain_id, "nonce": nonce, "to": to, "value": value, "gas": 21000,
          "maxFeePerGas": 2 * int(rpc(session, chain, "eth_gasPrice"), 16), "maxPriorityFeePerGas": 10**9}
    return "0x" + Account.sign_transaction(tx, key).raw_transaction.hex()


def test_identity_and_timer_mining(chain, session):
    assert rpc(session, chain, "eth_chainId") == hex(chain.chain_id)
    assert rpc(session, chain, "net_version") == str(chain.chain_id)
    start = int(rpc(session, chain, "eth_blockNumber"), 16)
    wait_until(lambda: int(rpc(session, chain, "eth_blockNumber"), 16) >= start + 2, timeout_s=10, interval_s=0.05,
               what=f"the timer mining two blocks past {start}")
    head = rpc(session, chain, "eth_getBlockByNumber", "latest", False)
    parent = rpc(session, chain, "eth_getBlockByNumber", hex(int(head["number"], 16) - 1), False)
    assert head["parentHash"] == parent["hash"]
    assert rpc(session, chain, "eth_getBlockByHash", parent["hash"], False)["number"] == parent["number"]
    assert rpc(session, chain, "eth_getBlockByNumber", hex(10**9), False) is None


def test_signed_transfers_land_and_read_back(manual_chain, session):
    chain = manual_chain
    sender, target = Account.create(), Account.create().address
    funding = chain.send_transaction(sender.address, 10**18)
    assert rpc(session, chain, "eth_getTransactionReceipt", funding) is None  # pending until the next block
    assert rpc(session, chain, "eth_getTransactionByHash", funding)["blockHash"] is None
    chain.mine()
    assert int(wait_receipt(session, chain, funding)["status"], 16) == 1
    assert int(rpc(session, chain, "eth_getBalance", sender.address, "latest"), 16) == 10**18

    # Two transactions from one sender before a block: consecutive nonces, as a hot wallet sends them.
    first = rpc(session, chain, "eth_sendRawTransaction", sign(sender.key, chain, session, 0, target, 1000))
    assert rpc(session, chain, "eth_getTransactionCount", sender.address, "pending") == "0x1"
    second = rpc(session, chain, "eth_sendRawTransaction", sign(sender.key, chain, session, 1, target, 234))
    chain.mine()
    receipts = [wait_receipt(session, chain, h) for h in (first, second)]
    assert [int(r["status"], 16) for r in receipts] == [1, 1]
    assert int(rpc(session, chain, "eth_getBalance", target, "latest"), 16) == 1234
    spent_gas = sum(int(r["gasUsed"], 16) * int(r["effectiveGasPrice"], 16) for r in receipts)
    assert int(rpc(session, chain, "eth_getBalance", sender.address), 16) == 10**18 - 1234 - spent_gas
    assert rpc(session, chain, "eth_getTransactionCount", sender.address, "latest") == "0x2"

    tx = rpc(session, chain, "eth_getTransactionByHash", first)
    assert (tx["from"].lower(), tx["to"].lower(), tx["value"], tx["nonce"]) == (
        sender.address.lower(), target.lower(), hex(1000), "0x0")
    assert tx["blockHash"] == receipts[0]["blockHash"]
    block = rpc(session, chain, "eth_getBlockByHash", receipts[0]["blockHash"], True)
    assert first in [t["hash"] for t in block["transactions"]]
    assert rpc(session, chain, "eth_getBlockByNumber", block["number"], False)["transactions"] == [
        t["hash"] for t in block["transactions"]]

    # The same nonce again is refused, as a node refuses it.
    with pytest.raises(RuntimeError, match="-32000"):
        rpc(session, chain, "eth_sendRawTransaction", sign(sender.key, chain, session, 0, target, 1))


def test_logs_estimate_call_and_batches(chain, session):
    deploy = chain.send_transaction(None, 0, EMIT_LOG_INIT_CODE, gas=100_000)
    receipt = wait_receipt(session, chain, deploy)
    contract = receipt["contractAddress"]
    assert contract and len(receipt["logs"]) == 1
    logs = rpc(session, chain, "eth_getLogs", {"fromBlock": receipt["blockNumber"], "toBlock": "latest",
                                               "address": contract, "topics": [LOG_TOPIC]})
    assert [(entry["transactionHash"], entry["topics"], entry["removed"]) for entry in logs] == [
        (deploy, [LOG_TOPIC], False)]
    assert rpc(session, chain, "eth_getLogs", {"blockHash": receipt["blockHash"], "address": [contract]}) == logs
    assert rpc(session, chain, "eth_getLogs", {"fromBlock": receipt["blockNumber"], "toBlock": "latest",
                                               "topics": ["0x" + "cd" * 32]}) == []

    assert rpc(session, chain, "eth_estimateGas", {"from": chain.dev_address, "to": contract, "value": "0x1"}) \
        == hex(21000)
    assert rpc(session, chain, "eth_call", {"to": contract, "data": "0x"}, "latest") == "0x"
    assert int(rpc(session, chain, "eth_gasPrice"), 16) > 10**9

    batch = session.post(chain.url, json=[
        {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getTransactionReceipt", "params": ["0x" + "00" * 32]},
    ], timeout=10).json()
    by_id = {answer["id"]: answer for answer in batch}
    assert int(by_id[1]["result"], 16) >= int(receipt["blockNumber"], 16)
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["result"] is None
