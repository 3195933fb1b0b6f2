"""Typed reads pinned to one node: `NodeSession`, what the block watcher and the signer read the chain with.

A session is opened by the node pool (`ChainClient.session()`) on the node active at that moment, and every
read of one step goes to that node, so one block's processing never mixes two nodes' views of the chain.
Results are mapped to typed values once (chain/types.py), and checked against the question (the block number
or hash asked, the transaction of a receipt, the log filter): a node that answers wrongly is retried and left,
never believed.

A call retries a bounded number of times on the same node. If it still fails, the session reports the node
failed to the pool (which cools it down for its `cooldown_s` and switches to another node), is abandoned, and
raises RetriableChainError: the caller retries its whole step on its next tick, with a new session.

The session speaks to the node through the transport's public calls and to the pool through three reports
(`node_answered`, `node_head_seen`, `node_failed`); it knows nothing else of either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from eth_utils import keccak

from chain.errors import ChainError, RetriableChainError, TransactionRejected
from chain.transport import Transport, shorten
from chain.types import Block, Log, Receipt, hash32, parse_block, parse_log, parse_receipt, quantity
from core.limits import RPC_RETRY_BACKOFF_MAX_S, RPC_RETRY_BACKOFF_S

if TYPE_CHECKING:  # the pool creates sessions: a runtime import would be circular
    from chain.nodes import ChainClient, Node

T = TypeVar("T")

# What eth_sendRawTransaction answers for a transaction the node already has: the send succeeded before.
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown")
# Codes a node uses to refuse a transaction itself (nonce, funds, fee, bad encoding) as opposed to failing.
_TX_REJECTED_CODES = {-32000, -32003, -32010, -32602, 3}



class NodeSession:
    """Every read of one scan step, on one node. After a call fails for good (or `fail()` is called) the
    session is abandoned: its later calls raise at once, so a step never continues on a node the pool has
    given up on.

    Concurrent calls on one session (and on one pool) from several threads are safe: each thread sends through
    its own HTTP session, request ids and counters are taken atomically or under a lock, and a failure seen by
    one thread abandons the session for all of them (a call already in flight in another thread finishes on
    its own)."""

    def __init__(self, transport: Transport, pool: ChainClient, node: Node, *, retries: int,
                 batch_size: int) -> None:
        self._transport = transport
        self._pool = pool
        self._node = node
        self._retries = retries
        self._batch_size = batch_size
        self.url = node.url
        self.label = node.label
        self._abandoned: str | None = None

    def head(self) -> int:
        head = self._retrying("eth_blockNumber", lambda: quantity(self._request("eth_blockNumber", []),
                                                                  "eth_blockNumber"))
        self._pool.node_head_seen(self._node, head)
        return head

    def blocks(self, numbers: Sequence[int], full: bool = True) -> list[Block]:
        """Blocks by number, in the order asked; a block the node does not have is a RetriableChainError, and so
        is a block that does not link to its predecessor fetched in the same batch."""
        found: list[Block] = []
        for chunk in _chunks(list(numbers), self._batch_size):
            found.extend(self._retrying("eth_getBlockByNumber", lambda c=chunk: self._fetch_blocks(c, full)))
        return found

    def block_by_hash(self, block_hash: str, full: bool = True) -> Block | None:
        """None if this node does not know the block (orphaned, or never seen)."""
        wanted = hash32(block_hash, "requested block hash")

        def fetch() -> Block | None:
            raw = self._request("eth_getBlockByHash", [wanted, full])
            if raw is None:
                return None
            block = parse_block(raw, full)
            if block.hash != wanted:
                raise RetriableChainError(f"asked block {wanted}, got {block.hash}", url=self.url)
            return block

        return self._retrying("eth_getBlockByHash", fetch)

    def logs(self, from_block: int, to_block: int, addresses: Sequence[str] = (),
             topics: Sequence[str | Sequence[str] | None] = ()) -> list[Log]:
        """Logs in [from_block, to_block] of the given contracts (all if empty) matching `topics`."""
        query = _log_filter(addresses, topics, fromBlock=hex(from_block), toBlock=hex(to_block))
        wanted = {a.lower() for a in addresses}

        def fetch() -> list[Log]:
            logs = _parse_logs(self._request("eth_getLogs", [query]), self.url)
            for item in logs:
                if not from_block <= item.block_number <= to_block or (wanted and item.address.lower() not in wanted):
                    raise RetriableChainError(f"log outside the filter: block {item.block_number} "
                                              f"address {item.address}", url=self.url, method="eth_getLogs")
            return logs

        return self._retrying("eth_getLogs", fetch)

    def block_logs(self, block_hash: str, addresses: Sequence[str] = (),
                   topics: Sequence[str | Sequence[str] | None] = ()) -> list[Log]:
        """Logs of exactly one block, by hash (EIP-234): immune to a reorg between reading a block and its logs."""
        wanted_hash = hash32(block_hash, "requested block hash")
        query = _log_filter(addresses, topics, blockHash=wanted_hash)

        def fetch() -> list[Log]:
            logs = _parse_logs(self._request("eth_getLogs", [query]), self.url)
            for item in logs:
                if item.block_hash != wanted_hash:
                    raise RetriableChainError(f"log of block {item.block_hash} in answer for {wanted_hash}",
                                              url=self.url, method="eth_getLogs")
            return logs

        return self._retrying("eth_getLogs", fetch)

    @overload
    def receipts(self, tx_hashes: Sequence[str], missing_ok: Literal[False] = False) -> list[Receipt]: ...

    @overload
    def receipts(self, tx_hashes: Sequence[str], missing_ok: Literal[True]) -> list[Receipt | None]: ...

    def receipts(self, tx_hashes: Sequence[str], missing_ok: bool = False) -> list[Receipt] | list[Receipt | None]:
        """Receipts in the order asked. A receipt the node does not have is a RetriableChainError (retried, then
        the node fails over); with `missing_ok` it is None instead, for a caller that expects the chain may have
        moved since it read the block (that is a reorg, not a fault of the node)."""
        wanted = [hash32(h, "requested transaction hash") for h in tx_hashes]
        found: list[Receipt | None] = []
        for chunk in _chunks(wanted, self._batch_size):
            found.extend(self._retrying("eth_getTransactionReceipt",
                                        lambda c=chunk: self._fetch_receipts(c, missing_ok)))
        return found

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of one transaction, None while it is not mined (on this node)."""
        wanted = hash32(tx_hash, "requested transaction hash")

        def fetch() -> Receipt | None:
            raw = self._request("eth_getTransactionReceipt", [wanted])
            return None if raw is None else _checked_receipt(raw, wanted, self.url)

        return self._retrying("eth_getTransactionReceipt", fetch)

    def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcasts signed bytes; returns the tx hash. Re-sending the same bytes is safe (the node answers
        'already known', which counts as sent). A refusal by the node raises TransactionRejected."""
        tx_hash = "0x" + keccak(raw).hex()
        return self._retrying("eth_sendRawTransaction", lambda: self._send(raw, tx_hash))

    def balances_at(self, holders: Sequence[str], block_number: int, token: str | None = None) -> list[int]:
        """Each holder's balance at one block (ETH, or the ERC-20 `token`'s balanceOf), in the order asked,
        read in JSON-RPC batches: the reconciliation compares the ledger with one height of the chain."""
        found: list[int] = []
        method = "eth_getBalance" if token is None else "eth_call"
        for chunk in _chunks(list(holders), self._batch_size):
            found.extend(self._retrying(method, lambda c=chunk: self._fetch_balances(c, block_number, token)))
        return found

    def call(self, method: str, params: list) -> Any:
        """Escape hatch: one raw JSON-RPC call (retried like the others), result unparsed."""
        return self._retrying(method, lambda: self._request(method, params))

    def calls(self, calls: Sequence[tuple[str, list]]) -> list[Any]:
        """Several read calls in one JSON-RPC batch (balances of many addresses), answers in order."""
        if not calls:
            return []
        return self._retrying("batch", lambda: self._transport.batch(self.url, list(calls)))

    def fail(self, reason: str) -> None:
        """Report this node bad (e.g. its answers contradict each other): the session is abandoned, the node
        cools down for the pool's `cooldown_s` and the pool switches to another node now."""
        self._abandoned = reason
        self._pool.node_failed(self._node, reason)

    # --- internals ---------------------------------------------------------------------------------------

    def _retrying(self, method: str, attempt: Callable[[], T]) -> T:
        if self._abandoned:
            raise RetriableChainError(f"session on {self.label} abandoned: {self._abandoned}", url=self.url,
                                      method=method)
        attempts = self._retries + 1
        for number in range(attempts):
            try:
                result = attempt()
            except RetriableChainError as exc:
                last = exc
                if number + 1 < attempts:
                    time.sleep(min(RPC_RETRY_BACKOFF_S * 2 ** number, RPC_RETRY_BACKOFF_MAX_S))
            else:
                self._pool.node_answered(self._node)
                return result
        reason = f"{method} failed {attempts} times: {last}"
        self.fail(reason)
        raise RetriableChainError(f"{self.label}: {reason}", url=self.url, method=method) from last

    def _request(self, method: str, params: list) -> Any:
        return self._transport.request(self.url, method, params)

    def _fetch_blocks(self, numbers: list[int], full: bool) -> list[Block]:
        raws = self._transport.batch(self.url, [("eth_getBlockByNumber", [hex(n), full]) for n in numbers])
        blocks: list[Block] = []
        for number, raw in zip(numbers, raws):
            block = self._checked_block(raw, number, full)
            if blocks and blocks[-1].number + 1 == number and block.parent_hash != blocks[-1].hash:
                # a reorg between the reads of one batch, or a node that makes blocks up: read again
                raise RetriableChainError(f"block {number} does not link to block {number - 1} in the same batch",
                                          url=self.url, method="eth_getBlockByNumber")
            blocks.append(block)
        return blocks

    def _checked_block(self, raw: Any, number: int, full: bool) -> Block:
        if raw is None:
            raise RetriableChainError(f"block {number} not available", url=self.url, method="eth_getBlockByNumber")
        block = parse_block(raw, full)
        if block.number != number:
            raise RetriableChainError(f"asked block {number}, got {block.number}", url=self.url,
                                      method="eth_getBlockByNumber")
        return block

    def _fetch_balances(self, holders: list[str], block_number: int, token: str | None) -> list[int]:
        tag = hex(block_number)
        if token is None:
            calls = [("eth_getBalance", [holder, tag]) for holder in holders]
        else:  # balanceOf(address)
            calls = [("eth_call", [{"to": token, "data": "0x70a08231" + "0" * 24 + holder[2:].lower()}, tag])
                     for holder in holders]
        raws = self._transport.batch(self.url, calls)
        return [quantity(raw, calls[0][0]) if token is None else _word(raw, self.url) for raw in raws]

    def _fetch_receipts(self, tx_hashes: list[str], missing_ok: bool) -> list[Receipt | None]:
        raws = self._transport.batch(self.url, [("eth_getTransactionReceipt", [h]) for h in tx_hashes])
        receipts: list[Receipt | None] = []
        for tx_hash, raw in zip(tx_hashes, raws):
            if raw is None and missing_ok:
                receipts.append(None)
            elif raw is None:
                raise RetriableChainError(f"receipt of {tx_hash} not available", url=self.url,
                                          method="eth_getTransactionReceipt")
            else:
                receipts.append(_checked_receipt(raw, tx_hash, self.url))
        return receipts

    def _send(self, raw: bytes, tx_hash: str) -> str:
        try:
            answer = self._request("eth_sendRawTransaction", ["0x" + raw.hex()])
        except ChainError as exc:
            if exc.code is None:
                raise  # no answer from the node: retried like any read
            if any(text in exc.rpc_message.lower() for text in _ALREADY_KNOWN):
                return tx_hash
            if exc.code in _TX_REJECTED_CODES:
                raise TransactionRejected(f"{self.label} refused {tx_hash}: {exc.rpc_message}", url=self.url,
                                          reason=exc.rpc_message, code=exc.code) from exc
            raise
        if hash32(answer, "eth_sendRawTransaction result") != tx_hash:
            raise RetriableChainError(f"node answered hash {answer} for {tx_hash}", url=self.url,
                                      method="eth_sendRawTransaction")
        return tx_hash


def _checked_receipt(raw: Any, tx_hash: str, url: str) -> Receipt:
    receipt = parse_receipt(raw)
    if receipt.tx_hash != tx_hash:
        raise RetriableChainError(f"asked receipt of {tx_hash}, got {receipt.tx_hash}", url=url,
                                  method="eth_getTransactionReceipt")
    return receipt


def _parse_logs(raw: Any, url: str) -> list[Log]:
    if not isinstance(raw, list):
        raise RetriableChainError(f"eth_getLogs result is not a list: {shorten(raw)}", url=url, method="eth_getLogs")
    return [parse_log(item) for item in raw]


def _log_filter(addresses: Sequence[str], topics: Sequence[Any], **where: str) -> dict[str, Any]:
    query: dict[str, Any] = dict(where)
    if addresses:
        query["address"] = [a.lower() for a in addresses]
    if topics:
        query["topics"] = [t.lower() if isinstance(t, str) else t for t in topics]
    return query


def _word(raw: Any, url: str) -> int:
    """A 32-byte eth_call result as an unsigned integer ("0x" alone: no contract there, a ChainError)."""
    if not isinstance(raw, str) or not raw.startswith("0x") or len(raw) != 66:
        raise ChainError(f"balanceOf answered {shorten(raw)}", url=url, method="eth_call")
    return int(raw, 16)


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
