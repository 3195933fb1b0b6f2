"""Typed chain values and the mappers that build them from raw JSON-RPC results.

Normalisation happens here, once: quantities hex -> int, addresses -> EIP-55 checksummed str, hashes and data
-> 0x-prefixed lowercase str. A field that is missing or malformed raises RetriableChainError naming the
field and the value (a node that sends garbage is a node problem: another node, or the same one later, may
answer correctly). Nothing is swallowed or guessed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from chain.errors import RetriableChainError

_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*\Z")


@dataclass(frozen=True, slots=True)
class Tx:
    hash: str
    from_address: str
    to_address: str | None  # None for a contract creation
    value: int
    input: str
    nonce: int
    block_number: int
    block_hash: str
    index: int


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    transactions: tuple[Tx, ...]  # empty when fetched without full transactions
    tx_hashes: tuple[str, ...] = ()  # always filled by parse_block, in block order


@dataclass(frozen=True, slots=True)
class Log:
    address: str
    topics: tuple[str, ...]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    status: int  # 1 success, 0 reverted
    block_number: int
    block_hash: str
    logs: tuple[Log, ...]
    gas_used: int = 0
    effective_gas_price: int = 0


# --- field readers: each names the field and shows the bad value -------------------------------------------

def _field(raw: Any, key: str, what: str) -> Any:
    if not isinstance(raw, dict):
        raise RetriableChainError(f"malformed {what}: expected an object, got {_show(raw)}")
    if key not in raw or raw[key] is None:
        raise RetriableChainError(f"malformed {what}: field {key!r} missing or null")
    return raw[key]


def quantity(value: Any, what: str = "quantity") -> int:
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise RetriableChainError(f"malformed {what}: not a hex quantity: {_show(value)}")
    return int(value, 16)


def hash32(value: Any, what: str = "hash") -> str:
    if not isinstance(value, str) or not _HASH.match(value):
        raise RetriableChainError(f"malformed {what}: not a 32-byte hash: {_show(value)}")
    return value.lower()


def address(value: Any, what: str = "address") -> str:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise RetriableChainError(f"malformed {what}: not a 20-byte address: {_show(value)}")
    return checksum(value.lower())


def data(value: Any, what: str = "data") -> str:
    if not isinstance(value, str) or not _DATA.match(value):
        raise RetriableChainError(f"malformed {what}: not hex data: {_show(value)}")
    return value.lower()


@functools.lru_cache(maxsize=65536)
def checksum(lower: str) -> str:
    # keccak per address is the costly part of scanning full blocks; deposit addresses repeat a lot
    return to_checksum_address(lower)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# --- mappers ---------------------------------------------------------------------------------------------

def parse_tx(raw: Any) -> Tx:
    what = "transaction"
    tx_hash = hash32(_field(raw, "hash", what), "transaction hash")
    what = f"transaction {tx_hash}"
    to_raw = raw.get("to")
    return Tx(
        hash=tx_hash,
        from_address=address(_field(raw, "from", what), f"{what} from"),
        to_address=None if to_raw is None else address(to_raw, f"{what} to"),
        value=quantity(_field(raw, "value", what), f"{what} value"),
        input=data(_field(raw, "input", what), f"{what} input"),
        nonce=quantity(_field(raw, "nonce", what), f"{what} nonce"),
        block_number=quantity(_field(raw, "blockNumber", what), f"{what} blockNumber"),
        block_hash=hash32(_field(raw, "blockHash", what), f"{what} blockHash"),
        index=quantity(_field(raw, "transactionIndex", what), f"{what} transactionIndex"),
    )


def parse_block(raw: Any, full: bool) -> Block:
    """A block from eth_getBlockByNumber/Hash. With `full`, transactions must be objects belonging to this
    block; without, they must be hashes. A null block is the caller's business (it knows if null is allowed)."""
    what = "block"
    number = quantity(_field(raw, "number", what), "block number")
    what = f"block {number}"
    block_hash = hash32(_field(raw, "hash", what), f"{what} hash")
    items = _field(raw, "transactions", what)
    if not isinstance(items, list):
        raise RetriableChainError(f"malformed {what}: transactions is not a list: {_show(items)}")
    if full:
        txs = tuple(parse_tx(item) for item in items)
        for tx in txs:
            if tx.block_hash != block_hash or tx.block_number != number:
                raise RetriableChainError(f"inconsistent {what}: transaction {tx.hash} says block "
                                          f"{tx.block_number} {tx.block_hash}")
        tx_hashes = tuple(tx.hash for tx in txs)
    else:
        txs = ()
        tx_hashes = tuple(hash32(item, f"{what} transaction hash") for item in items)
    return Block(
        number=number,
        hash=block_hash,
        parent_hash=hash32(_field(raw, "parentHash", what), f"{what} parentHash"),
        timestamp=quantity(_field(raw, "timestamp", what), f"{what} timestamp"),
        transactions=txs,
        tx_hashes=tx_hashes,
    )


def parse_log(raw: Any) -> Log:
    what = "log"
    topics = _field(raw, "topics", what)
    if not isinstance(topics, list):
        raise RetriableChainError(f"malformed log: topics is not a list: {_show(topics)}")
    removed = raw.get("removed", False)
    if not isinstance(removed, bool):
        raise RetriableChainError(f"malformed log: removed is not a boolean: {_show(removed)}")
    return Log(
        address=address(_field(raw, "address", what), "log address"),
        topics=tuple(hash32(t, "log topic") for t in topics),
        data=data(_field(raw, "data", what), "log data"),
        # pending logs have null positions: we never ask for pending, so a null here is a node fault
        block_number=quantity(_field(raw, "blockNumber", what), "log blockNumber"),
        block_hash=hash32(_field(raw, "blockHash", what), "log blockHash"),
        tx_hash=hash32(_field(raw, "transactionHash", what), "log transactionHash"),
        log_index=quantity(_field(raw, "logIndex", what), "log logIndex"),
        removed=removed,
    )


def parse_receipt(raw: Any) -> Receipt:
    what = "receipt"
    tx_hash = hash32(_field(raw, "transactionHash", what), "receipt transactionHash")
    what = f"receipt of {tx_hash}"
    logs = _field(raw, "logs", what)
    if not isinstance(logs, list):
        raise RetriableChainError(f"malformed {what}: logs is not a list: {_show(logs)}")
    status = quantity(_field(raw, "status", what), f"{what} status")
    if status not in (0, 1):
        raise RetriableChainError(f"malformed {what}: status {status} is neither 0 nor 1")
    receipt = Receipt(
        tx_hash=tx_hash,
        status=status,
        block_number=quantity(_field(raw, "blockNumber", what), f"{what} blockNumber"),
        block_hash=hash32(_field(raw, "blockHash", what), f"{what} blockHash"),
        logs=tuple(parse_log(item) for item in logs),
        gas_used=quantity(_field(raw, "gasUsed", what), f"{what} gasUsed"),
        # absent only in receipts from before London (EIP-1559); 0 says "unknown", never a real price
        effective_gas_price=quantity(raw.get("effectiveGasPrice") or "0x0", f"{what} effectiveGasPrice"),
    )
    for log in receipt.logs:
        if log.tx_hash != tx_hash or log.block_hash != receipt.block_hash:
            raise RetriableChainError(f"inconsistent {what}: log {log.log_index} belongs to {log.tx_hash} "
                                      f"in block {log.block_hash}")
    return receipt
