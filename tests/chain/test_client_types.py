"""Mappers and the Transfer decoder on hand-made raw values: normalisation once at the edge, malformed input
refused with a RetriableChainError that names the field, never a wrong value."""

from __future__ import annotations

import pytest

from chain.erc20 import TRANSFER_TOPIC, decode_transfer
from chain.errors import RetriableChainError
from chain.types import Log, parse_block, parse_log, parse_receipt

BLOCK_HASH = "0x" + "AB" * 32
PARENT = "0x" + "cd" * 32
TX_HASH = "0x" + "12" * 32
SENDER = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
RECEIVER = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"


def raw_tx(**changes):
    tx = {"hash": TX_HASH, "from": SENDER, "to": RECEIVER, "value": "0xde0b6b3a7640000", "input": "0x",
          "nonce": "0x7", "blockNumber": "0x10", "blockHash": BLOCK_HASH, "transactionIndex": "0x0"}
    tx.update(changes)
    return tx


def raw_block(**changes):
    block = {"number": "0x10", "hash": BLOCK_HASH, "parentHash": PARENT, "timestamp": "0x6500",
             "transactions": [raw_tx()]}
    block.update(changes)
    return block


def raw_log(**changes):
    log = {"address": RECEIVER, "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + SENDER[2:],
                                           "0x" + "00" * 12 + RECEIVER[2:]],
           "data": "0x" + f"{12345:064x}", "blockNumber": "0x10", "blockHash": BLOCK_HASH,
           "transactionHash": TX_HASH, "logIndex": "0x3", "removed": False}
    log.update(changes)
    return log


def test_block_is_normalised_once():
    block = parse_block(raw_block(), full=True)
    assert (block.number, block.timestamp) == (16, 0x6500)
    assert block.hash == BLOCK_HASH.lower() and block.parent_hash == PARENT
    tx = block.transactions[0]
    assert tx.value == 10**18 and tx.nonce == 7 and tx.index == 0
    assert tx.from_address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # EIP-55
    assert tx.to_address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert block.tx_hashes == (TX_HASH,)


def test_block_without_full_transactions_keeps_hashes():
    block = parse_block(raw_block(transactions=[TX_HASH.upper().replace("0X", "0x")]), full=False)
    assert block.transactions == () and block.tx_hashes == (TX_HASH,)


def test_contract_creation_has_no_receiver():
    block = parse_block(raw_block(transactions=[raw_tx(to=None)]), full=True)
    assert block.transactions[0].to_address is None


@pytest.mark.parametrize("changes, field", [
    ({"parentHash": "0x1234"}, "parentHash"),
    ({"parentHash": None}, "parentHash"),
    ({"hash": "0x" + "zz" * 32}, "hash"),
    ({"number": "16"}, "number"),
    ({"number": 16}, "number"),
    ({"timestamp": "0x"}, "timestamp"),
    ({"transactions": "0x"}, "transactions"),
    ({"transactions": [raw_tx(value="0x-1")]}, "value"),
    ({"transactions": [raw_tx(**{"from": "0x1234"})]}, "from"),
    ({"transactions": [raw_tx(blockHash=PARENT)]}, "inconsistent"),
    ({"transactions": [raw_tx(blockNumber="0x11")]}, "inconsistent"),
])
def test_malformed_block_is_refused_with_context(changes, field):
    with pytest.raises(RetriableChainError, match=field):
        parse_block(raw_block(**changes), full=True)


@pytest.mark.parametrize("raw", [None, [], "garbage", 7])
def test_block_that_is_not_an_object_is_refused(raw):
    with pytest.raises(RetriableChainError, match="malformed block"):
        parse_block(raw, full=True)


def test_receipt_status_and_logs():
    raw = {"transactionHash": TX_HASH, "status": "0x1", "blockNumber": "0x10", "blockHash": BLOCK_HASH,
           "gasUsed": "0x5208", "effectiveGasPrice": "0x3b9aca00", "logs": [raw_log()]}
    receipt = parse_receipt(raw)
    assert (receipt.status, receipt.gas_used, receipt.effective_gas_price) == (1, 21000, 10**9)
    assert receipt.logs[0].log_index == 3
    with pytest.raises(RetriableChainError, match="status"):
        parse_receipt({**raw, "status": "0x2"})
    with pytest.raises(RetriableChainError, match="status"):
        parse_receipt({**raw, "status": None})
    with pytest.raises(RetriableChainError, match="inconsistent"):
        parse_receipt({**raw, "logs": [raw_log(transactionHash=PARENT)]})


def test_transfer_decodes_to_checksummed_parties_and_exact_amount():
    log = parse_log(raw_log(data="0x" + "ff" * 32))
    sender, receiver, amount = decode_transfer(log)
    assert sender == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert receiver == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert amount == 2**256 - 1


def _log(**changes) -> Log:
    return parse_log(raw_log(**changes))


@pytest.mark.parametrize("log", [
    _log(topics=[TRANSFER_TOPIC, "0x" + "00" * 12 + SENDER[2:], "0x" + "00" * 12 + RECEIVER[2:],
                 "0x" + "00" * 31 + "01"], data="0x"),                                   # ERC-721 Transfer
    _log(data="0x" + "00" * 31),                                                         # short amount
    _log(data="0x" + "00" * 64),                                                         # long amount
    _log(topics=[TRANSFER_TOPIC, "0x" + "11" * 12 + SENDER[2:], "0x" + "00" * 12 + RECEIVER[2:]]),  # dirty pad
    _log(topics=["0x" + "8c" * 32, "0x" + "00" * 12 + SENDER[2:], "0x" + "00" * 12 + RECEIVER[2:]]),  # Approval-like
])
def test_not_a_transfer_decodes_to_none(log):
    assert decode_transfer(log) is None


def test_malformed_log_is_refused():
    with pytest.raises(RetriableChainError, match="logIndex"):
        parse_log(raw_log(logIndex=None))
    with pytest.raises(RetriableChainError, match="removed"):
        parse_log(raw_log(removed="no"))
    with pytest.raises(RetriableChainError, match="topic"):
        parse_log(raw_log(topics=["0x12"]))
