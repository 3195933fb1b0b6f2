"""JSON-RPC client for one or more Ethereum nodes: a primary and hot standbys (WALLET_RPC_URLS order).

Requests go through chain/transport.py (JSON-RPC over HTTP, batch arrays, errors classified as retriable or
fatal). Results are mapped to typed values once, in chain/types.py.

Node choice. `ChainClient` keeps a health record per node: its head, whether it answers, why not. The active
node is the first URL (primary) that is healthy and not lagging the best healthy head by more than
`max_lag_blocks`; otherwise the next one in order that is. `refresh()` (a cheap eth_blockNumber per node,
`health_timeout_s`) updates that record and may switch. A node busy with a large read may miss that short
timeout while it is fine: a node that answered a real read in the last `health_grace_s` stays in use after
one missed check, and is marked down on the second consecutive miss (a real read that fails still fails
the node over at once). Reads go through a `NodeSession`, pinned to the node active when it was
opened, so one block's processing never mixes nodes. A session call retries a bounded number of times on the
same node; if it still fails, the node is marked unhealthy and cools down for `cooldown_s`, the client
switches, the session is abandoned and the caller gets a RetriableChainError: it retries on its next tick
with a new session. Every switch is logged with its reason and counted in `metrics()`.

Chain id: `start()` asks every node; all that answer must agree (and equal `expected_chain_id` if given),
else ChainIdMismatch. A node that is down at start is checked when it first answers, and refused for good
(logged) if it serves another chain; it is never read from before that check.

URLs may carry API keys, so logs name nodes by a label (`#0 https://host`), never by the full URL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar, overload
from urllib.parse import urlsplit

from eth_utils import keccak

from chain.errors import (ChainError, ChainIdMismatch, FatalChainError, NoHealthyNode, RetriableChainError,
                          TransactionRejected)
from chain.transport import Transport, shorten
from chain.types import Block, Log, Receipt, hash32, parse_block, parse_log, parse_receipt, quantity

log = logging.getLogger("chain.client")

T = TypeVar("T")

# What eth_sendRawTransaction answers for a transaction the node already has: the send succeeded before.
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown")
# Codes a node uses to refuse a transaction itself (nonce, funds, fee, bad encoding) as opposed to failing.
_TX_REJECTED_CODES = {-32000, -32003, -32010, -32602, 3}

_BACKOFF_S = 0.05
_BACKOFF_MAX_S = 1.0


@dataclass
class _Node:
    index: int
    url: str
    label: str
    head: int | None = None
    healthy: bool = False
    reason: str = "not checked yet"
    chain_id_checked: bool = False
    refused: bool = False  # serves another chain: never used
    cooldown_until: float = 0.0
    last_read_ok: float = -float("inf")  # monotonic time of the last real read it answered
    checks_missed: int = 0  # consecutive failed health checks


class Switch(NamedTuple):
    at: float  # unix time
    from_url: str | None  # None: there was no healthy node
    to_url: str | None  # None: there is no healthy node left
    reason: str


class ChainClient:
    def __init__(self, urls: Sequence[str], *, expected_chain_id: int | None = None, max_lag_blocks: int = 3,
                 timeout_s: float = 10.0, retries: int = 3, batch_size: int = 100,
                 cooldown_s: float = 10.0, health_timeout_s: float = 2.0, health_grace_s: float = 10.0) -> None:
        if not urls:
            raise ValueError("at least one RPC URL is required")
        if retries < 0 or batch_size < 1 or max_lag_blocks < 0 or timeout_s <= 0 or health_timeout_s <= 0:
            raise ValueError("retries >= 0, batch_size >= 1, max_lag_blocks >= 0, timeout_s > 0 and "
                             "health_timeout_s > 0 are required")
        self.expected_chain_id = expected_chain_id
        self.max_lag_blocks = max_lag_blocks
        self.timeout_s = timeout_s
        self.retries = retries
        self.batch_size = batch_size
        self.cooldown_s = cooldown_s
        self.health_timeout_s = min(health_timeout_s, timeout_s)
        self.health_grace_s = health_grace_s
        self.chain_id: int | None = None
        self._transport = Transport(timeout_s)
        self._nodes = [_Node(i, url, _label(i, url)) for i, url in enumerate(urls)]
        self._active: _Node | None = None
        self._picked = False
        self._switches: list[Switch] = []
        self._lock = threading.RLock()
        self._failures = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> int:
        """Checks the chain id of every node that answers, then picks the active node. Returns the chain id."""
        answers: dict[int, int] = {}
        for node in self._nodes:
            try:
                answers[node.index] = self._chain_id_of(node)
            except ChainError as exc:
                self._mark_down(node, f"chain id not checked: {exc}")
        if not answers:
            raise NoHealthyNode("no node answered eth_chainId: " + self._reasons())
        expected = self.expected_chain_id if self.expected_chain_id is not None else answers[min(answers)]
        wrong = {self._nodes[i].label: cid for i, cid in answers.items() if cid != expected}
        if wrong:
            raise ChainIdMismatch(f"expected chain id {expected}; nodes disagree: {wrong}")
        self.chain_id = expected
        for index in answers:
            self._nodes[index].chain_id_checked = True
        self.refresh()
        return expected

    def close(self) -> None:
        self._transport.close()

    # --- node health and choice --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Asks every node for its head (short timeout, no retry) and re-picks the active node."""
        self._require_started()
        for node in self._nodes:
            if not node.refused:
                self._check(node)
        with self._lock:
            self._select()

    def session(self) -> NodeSession:
        """A session pinned to the node active now. Raises NoHealthyNode if there is none."""
        self._require_started()
        with self._lock:
            if self._active is None:
                raise NoHealthyNode("no healthy node: " + self._reasons())
            return NodeSession(self, self._active)

    @property
    def active_url(self) -> str | None:
        """The node reads go to now; None only while no node is healthy."""
        active = self._active
        return None if active is None else active.url

    @property
    def heads(self) -> dict[str, int | None]:
        return {node.url: node.head for node in self._nodes}

    @property
    def switches(self) -> list[Switch]:
        with self._lock:
            return list(self._switches)

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            active = self._active
            return {
                "chain_id": self.chain_id,
                "active_url": None if active is None else active.url,
                "active_label": None if active is None else active.label,
                "switch_count": len(self._switches),
                "last_switch_reason": self._switches[-1].reason if self._switches else None,
                "heads": self.heads,
                "nodes": [{"label": n.label, "head": n.head, "healthy": n.healthy, "reason": n.reason,
                           "refused": n.refused} for n in self._nodes],
                "requests": self._transport.http_requests,
                "failures": self._failures,
            }

    def _check(self, node: _Node) -> None:
        try:
            if not node.chain_id_checked:
                self._verify_chain_id(node)
                if node.refused:
                    return
            head = quantity(self._request(node.url, "eth_blockNumber", [], self.health_timeout_s),
                            "eth_blockNumber")
        except ChainError as exc:
            self._check_missed(node, f"health check failed: {exc}")
            return
        with self._lock:
            node.head = head
            node.checks_missed = 0
            if time.monotonic() < node.cooldown_until:
                return  # answers again, but failed a read recently: keep it out until the cooldown ends
            node.healthy = True
            node.reason = "ok"

    def _verify_chain_id(self, node: _Node) -> None:
        chain_id = self._chain_id_of(node)
        with self._lock:
            node.chain_id_checked = True
            if chain_id != self.chain_id:
                node.refused = True
                node.healthy = False
                node.reason = f"refused: serves chain id {chain_id}, expected {self.chain_id}"
                log.error("chain node refused", extra={"node": node.label, "reason": node.reason})

    def _chain_id_of(self, node: _Node) -> int:
        return quantity(self._request(node.url, "eth_chainId", [], self.health_timeout_s), "eth_chainId")

    def _check_missed(self, node: _Node, reason: str) -> None:
        """One missed check of a node that served a real read lately is forgiven (it may be busy serving
        a large batch); the second in a row, or any miss of a node idle for longer, marks it down."""
        with self._lock:
            node.checks_missed += 1
            recent = time.monotonic() - node.last_read_ok <= self.health_grace_s
            if node.healthy and recent and node.checks_missed == 1:
                log.info("chain node missed a health check; kept until it misses another",
                         extra={"node": node.label, "reason": reason})
                return
            self._mark_down(node, reason)

    def _mark_down(self, node: _Node, reason: str) -> None:
        with self._lock:
            node.healthy = False
            node.reason = reason

    def _node_failed(self, node: _Node, reason: str) -> None:
        """A session gave up on this node: keep it out for the cooldown and switch now."""
        with self._lock:
            self._failures += 1
            node.healthy = False
            node.reason = reason
            node.cooldown_until = time.monotonic() + self.cooldown_s
            log.warning("chain node failed", extra={"node": node.label, "reason": reason})
            self._select()

    def _node_head(self, node: _Node, head: int) -> None:
        with self._lock:
            node.head = head

    def _node_answered(self, node: _Node) -> None:
        node.last_read_ok = time.monotonic()  # one float store: atomic, no lock needed

    def _select(self) -> None:
        """Caller holds the lock. The first healthy node in URL order that does not lag the best healthy head."""
        healthy = [n for n in self._nodes if n.healthy and n.head is not None]
        best = max((n.head for n in healthy), default=None)
        chosen = next((n for n in healthy if n.head >= best - self.max_lag_blocks), None)
        previous = self._active
        if chosen is previous:
            return
        reason = self._switch_reason(previous, chosen, best)
        self._active = chosen
        if not self._picked:  # the first choice at start is not a switch
            self._picked = True
            log.info("chain node active", extra={"to_node": chosen.label, "reason": reason})
            return
        self._switches.append(Switch(time.time(), previous and previous.url, chosen and chosen.url, reason))
        log.warning("chain node switch", extra={"from_node": previous and previous.label,
                                                "to_node": chosen and chosen.label, "reason": reason,
                                                "switch_count": len(self._switches)})

    def _switch_reason(self, previous: _Node | None, chosen: _Node | None, best: int | None) -> str:
        if chosen is None:
            return "no healthy node: " + self._reasons()
        if previous is None:
            return f"{chosen.label} is the first healthy node in order (head {chosen.head})"
        if not previous.healthy:
            return f"{previous.label} unhealthy: {previous.reason}"
        if previous.index > chosen.index:
            return f"{chosen.label} is healthy and caught up (head {chosen.head}, best {best})"
        return (f"{previous.label} lags: head {previous.head} is more than {self.max_lag_blocks} blocks "
                f"behind {best}")

    def _reasons(self) -> str:
        return "; ".join(f"{n.label}: {n.reason}" for n in self._nodes)

    def _require_started(self) -> None:
        if self.chain_id is None:
            raise FatalChainError("ChainClient.start() was not called (or failed)")

    # --- transport: NodeSession's way to it, until it holds the transport itself ---------------------------

    def _request(self, url: str, method: str, params: list, timeout: float | None = None) -> Any:
        return self._transport.request(url, method, params, timeout)

    def _batch(self, url: str, calls: Sequence[tuple[str, list]]) -> list[Any]:
        return self._transport.batch(url, calls)


class NodeSession:
    """Every read of one scan step, on one node. After a call fails for good (or `fail()` is called) the
    session is abandoned: its later calls raise at once, so a step never continues on a node the client has
    given up on.

    Concurrent calls on one session (and on one client) from several threads are safe: each thread sends
    through its own HTTP session, request ids and counters are taken atomically or under the client's lock,
    and a failure seen by one thread abandons the session for all of them (a call already in flight in
    another thread finishes on its own)."""

    def __init__(self, client: ChainClient, node: _Node) -> None:
        self._client = client
        self._node = node
        self.url = node.url
        self.label = node.label
        self._abandoned: str | None = None

    def head(self) -> int:
        head = self._retrying("eth_blockNumber",
                              lambda: quantity(self._client._request(self.url, "eth_blockNumber", []),
                                               "eth_blockNumber"))
        self._client._node_head(self._node, head)
        return head

    def blocks(self, numbers: Sequence[int], full: bool = True) -> list[Block]:
        """Blocks by number, in the order asked; a block the node does not have is a RetriableChainError, and so
        is a block that does not link to its predecessor fetched in the same batch."""
        found: list[Block] = []
        for chunk in _chunks(list(numbers), self._client.batch_size):
            found.extend(self._retrying("eth_getBlockByNumber", lambda c=chunk: self._fetch_blocks(c, full)))
        return found

    def block_by_hash(self, block_hash: str, full: bool = True) -> Block | None:
        """None if this node does not know the block (orphaned, or never seen)."""
        wanted = hash32(block_hash, "requested block hash")

        def fetch() -> Block | None:
            raw = self._client._request(self.url, "eth_getBlockByHash", [wanted, full])
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
            logs = _parse_logs(self._client._request(self.url, "eth_getLogs", [query]), self.url)
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
            logs = _parse_logs(self._client._request(self.url, "eth_getLogs", [query]), self.url)
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
        for chunk in _chunks(wanted, self._client.batch_size):
            found.extend(self._retrying("eth_getTransactionReceipt",
                                        lambda c=chunk: self._fetch_receipts(c, missing_ok)))
        return found

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of one transaction, None while it is not mined (on this node)."""
        wanted = hash32(tx_hash, "requested transaction hash")

        def fetch() -> Receipt | None:
            raw = self._client._request(self.url, "eth_getTransactionReceipt", [wanted])
            return None if raw is None else _checked_receipt(raw, wanted, self.url)

        return self._retrying("eth_getTransactionReceipt", fetch)

    def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcasts signed bytes; returns the tx hash. Re-sending the same bytes is safe (the node answers
        'already known', which counts as sent). A refusal by the node raises TransactionRejected."""
        tx_hash = "0x" + keccak(raw).hex()
        return self._retrying("eth_sendRawTransaction", lambda: self._send(raw, tx_hash))

    def call(self, method: str, params: list) -> Any:
        """Escape hatch: one raw JSON-RPC call (retried like the others), result unparsed."""
        return self._retrying(method, lambda: self._client._request(self.url, method, params))

    def fail(self, reason: str) -> None:
        """Report this node bad (e.g. its answers contradict each other): the session is abandoned, the node
        cools down for the client's `cooldown_s` and the client switches to another node now."""
        self._abandoned = reason
        self._client._node_failed(self._node, reason)

    # --- internals ---------------------------------------------------------------------------------------

    def _retrying(self, method: str, attempt: Callable[[], T]) -> T:
        if self._abandoned:
            raise RetriableChainError(f"session on {self.label} abandoned: {self._abandoned}", url=self.url,
                                      method=method)
        attempts = self._client.retries + 1
        for number in range(attempts):
            try:
                result = attempt()
            except RetriableChainError as exc:
                last = exc
                if number + 1 < attempts:
                    time.sleep(min(_BACKOFF_S * 2 ** number, _BACKOFF_MAX_S))
            else:
                self._client._node_answered(self._node)
                return result
        reason = f"{method} failed {attempts} times: {last}"
        self.fail(reason)
        raise RetriableChainError(f"{self.label}: {reason}", url=self.url, method=method) from last

    def _fetch_blocks(self, numbers: list[int], full: bool) -> list[Block]:
        raws = self._client._batch(self.url, [("eth_getBlockByNumber", [hex(n), full]) for n in numbers])
        blocks = []
        for number, raw in zip(numbers, raws):
            if raw is None:
                raise RetriableChainError(f"block {number} not available", url=self.url,
                                          method="eth_getBlockByNumber")
            block = parse_block(raw, full)
            if block.number != number:
                raise RetriableChainError(f"asked block {number}, got {block.number}", url=self.url,
                                          method="eth_getBlockByNumber")
            if blocks and blocks[-1].number + 1 == number and block.parent_hash != blocks[-1].hash:
                # a reorg between the reads of one batch, or a node that makes blocks up: read again
                raise RetriableChainError(f"block {number} does not link to block {number - 1} in the same batch",
                                          url=self.url, method="eth_getBlockByNumber")
            blocks.append(block)
        return blocks

    def _fetch_receipts(self, tx_hashes: list[str], missing_ok: bool) -> list[Receipt | None]:
        raws = self._client._batch(self.url, [("eth_getTransactionReceipt", [h]) for h in tx_hashes])
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
            answer = self._client._request(self.url, "eth_sendRawTransaction", ["0x" + raw.hex()])
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


# --- checks of answers -----------------------------------------------------------------------------------

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


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _label(index: int, url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"#{index} {parts.scheme}://{host}{port}"

