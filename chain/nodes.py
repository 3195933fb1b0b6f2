"""Node health and choice: `ChainClient`, the pool of one or more Ethereum nodes, a primary and hot standbys
(WALLET_RPC_URLS order). It sends nothing itself but health checks; reads go through a `NodeSession`
(chain/session.py) that it opens on the active node, and every request through the transport
(chain/transport.py).

Node choice. The pool keeps a health record per node: its head, whether it answers, why not. The active node
is the first URL (primary) that is healthy and not lagging the best healthy head by more than
`max_lag_blocks`; otherwise the next one in order that is. `refresh()` (a cheap eth_blockNumber per node,
`health_timeout_s`) updates that record and may switch. A node busy with a large read may miss that short
timeout while it is fine: a node that answered a real read in the last `health_grace_s` stays in use after
one missed check, and is marked down on the second consecutive miss (a real read that fails still fails the
node over at once).

Failover. A session pinned to a node reports to the pool what it saw: `node_answered` (a real read
succeeded), `node_head_seen`, and `node_failed` when a read failed after its retries or the caller found the
node's answers contradict each other. A failed node is marked unhealthy and cools down for `cooldown_s` (it
is not used again before, even if it answers health checks), and the pool switches now. Every switch is
logged with its reason and counted in `metrics()`.

Chain id: `start()` asks every node; all that answer must agree (and equal `expected_chain_id` if given),
else ChainIdMismatch. A node that is down at start is checked when it first answers, and refused for good
(logged) if it serves another chain; it is never read from before that check.

URLs may carry API keys, so logs name nodes by a label (`#0 https://host`), never by the full URL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from chain.errors import ChainError, ChainIdMismatch, FatalChainError, NoHealthyNode
from chain.session import NodeSession
from chain.transport import Transport
from chain.types import quantity

log = logging.getLogger(__name__)


@dataclass
class Node:
    """One node's health record. Sessions read only `url` and `label`; the rest changes under the pool's lock."""

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
    """The nodes of one chain and which of them reads go to (see the module's docstring). Thread-safe."""

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
        self._nodes = [Node(i, url, _label(i, url)) for i, url in enumerate(urls)]
        self._active: Node | None = None
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

    # --- what callers see --------------------------------------------------------------------------------

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
            return NodeSession(self._transport, self, self._active, retries=self.retries,
                               batch_size=self.batch_size)

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

    # --- what sessions report ----------------------------------------------------------------------------

    def node_answered(self, node: Node) -> None:
        """A real read on `node` succeeded: it is serving, so one missed health check is forgiven."""
        node.last_read_ok = time.monotonic()  # one float store: atomic, no lock needed

    def node_head_seen(self, node: Node, head: int) -> None:
        with self._lock:
            node.head = head

    def node_failed(self, node: Node, reason: str) -> None:
        """A session gave up on `node`: keep it out for the cooldown and switch now."""
        with self._lock:
            self._failures += 1
            node.healthy = False
            node.reason = reason
            node.cooldown_until = time.monotonic() + self.cooldown_s
            log.warning("chain node failed", extra={"node": node.label, "reason": reason})
            self._select()

    # --- health checks -----------------------------------------------------------------------------------

    def _check(self, node: Node) -> None:
        try:
            if not node.chain_id_checked:
                self._verify_chain_id(node)
                if node.refused:
                    return
            head = quantity(self._transport.request(node.url, "eth_blockNumber", [], self.health_timeout_s),
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

    def _verify_chain_id(self, node: Node) -> None:
        chain_id = self._chain_id_of(node)
        with self._lock:
            node.chain_id_checked = True
            if chain_id != self.chain_id:
                node.refused = True
                node.healthy = False
                node.reason = f"refused: serves chain id {chain_id}, expected {self.chain_id}"
                log.error("chain node refused", extra={"node": node.label, "reason": node.reason})

    def _chain_id_of(self, node: Node) -> int:
        return quantity(self._transport.request(node.url, "eth_chainId", [], self.health_timeout_s), "eth_chainId")

    def _check_missed(self, node: Node, reason: str) -> None:
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

    def _mark_down(self, node: Node, reason: str) -> None:
        with self._lock:
            node.healthy = False
            node.reason = reason

    # --- choice ------------------------------------------------------------------------------------------

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

    def _switch_reason(self, previous: Node | None, chosen: Node | None, best: int | None) -> str:
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


def node_label(index: int, url: str) -> str:
    """How logs name a node: its place in WALLET_RPC_URLS, scheme, host and port; never the path or the query,
    which may hold an API key."""
    return _label(index, url)


def _label(index: int, url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"#{index} {parts.scheme}://{host}{port}"
