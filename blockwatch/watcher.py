"""BlockWatch's logic, outside any actor (the actor in actors/blockwatch.py only moves messages and keeps time).

One step (streamer style): open one NodeSession; target = min(head, tip + batch); read the blocks after the
tip and the transfers in them to watched addresses; if the first block does not name our tip as its parent,
walk back to the fork point and orphan what is above it instead; else record blocks, deposits and the new
tip in one transaction. The tip (cursor) therefore moves only with the work it stands for.

After a step, pending deposits with enough confirmations (tip − height + 1 ≥ WALLET_CONFIRMATIONS, counted
on the chain we verified) are credited by asking the owning shard; a deposit is marked confirmed only once
the shard answered. A credit is idempotent (its op id is the deposit's identity), so retrying after a lost
answer or a crash never credits twice.

Waiting for the node to serve full blocks dominates a catch-up, so while behind, blocks stay requested up to
two steps ahead (blockwatch.scanner.BlockFeed), a few requests in flight, and a range's token logs are fetched
while its blocks are. Blocks requested ahead come through one session, and are used only if that node is
still the active one; the step that uses them then reads everything else through the same session.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import peewee

from blockwatch import txwatch
from blockwatch.crediting import Crediting
from core import messages as m
from chain.nodes import ChainClient
from chain.session import NodeSession
from chain.errors import ChainError, FatalChainError, NoHealthyNode, RetriableChainError
from chain.types import Block
from blockwatch.scanner import BlockFeed, DeepReorg, Forward, Mismatch, Scanner, Transfer
from blockwatch.watchset import WatchSet
from blockwatch.deposits import DepositBook, Observation, Tip
from storage import sql, walletkeys
from storage.fence import Fence, FenceLost, fenced
from storage.models import Account
from core.config import Config
from core.limits import (
    TX_WATCH_RELOAD_MS,
    ADDRESS_LOAD_CHUNK, FEED_AHEAD_BATCHES, FETCH_PARALLEL, HISTORY_KEEP_MIN, NODE_REFRESH_EVERY_S,
    PRUNE_EVERY_BLOCKS,
)
from core.errors import WalletError
from core.money import AssetRegistry

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0


@dataclasses.dataclass
class StepResult:
    kind: str  # "idle" | "advanced" | "reorg"
    head: int
    tip: int
    blocks: int = 0
    deposits: int = 0

    @property
    def behind(self) -> bool:
        return self.kind == "reorg" or self.tip < self.head


@dataclasses.dataclass
class ScanMetrics:
    steps: int = 0
    step_errors: int = 0
    last_error: str | None = None
    blocks: int = 0
    reorgs: int = 0
    reorg_depth_last: int = 0
    reorg_depth_max: int = 0
    deposits_recorded: int = 0
    head: int | None = None
    recent: collections.deque = dataclasses.field(default_factory=collections.deque)  # (time, blocks)

    def scanned(self, blocks: int) -> None:
        now = time.monotonic()
        self.blocks += blocks
        self.recent.append((now, blocks))
        while self.recent and now - self.recent[0][0] > RATE_WINDOW_S:
            self.recent.popleft()

    def blocks_per_s(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        span = self.recent[-1][0] - self.recent[0][0]
        return sum(b for _, b in list(self.recent)[1:]) / span if span > 0 else 0.0


class BlockWatcher:
    def __init__(self, config: Config, client: ChainClient, crediting: Crediting, assets: AssetRegistry,
                 db: peewee.Database, fence: Fence | None = None) -> None:
        self.config = config
        self.fence = fence  # cluster mode: a BlockWatch paused past the loss of its lock commits nothing
        self.client = client
        self.crediting = crediting  # what is done with what is found: credits, holds
        self.db = db
        self.watch = WatchSet()
        self.txs = txwatch.TxWatch()
        self._last_tx_reload = 0.0
        # I/O threads: block requests ahead of the tip, and the logs of the range being read (see BlockFeed)
        self._blocks_pool = ThreadPoolExecutor(max_workers=FETCH_PARALLEL, thread_name_prefix="blockwatch-blocks")
        self._logs_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockwatch-logs")
        self.scanner = Scanner(self.watch, {a.contract.lower(): a.symbol for a in assets if a.contract},
                               self._blocks_pool, self._logs_pool, own_senders=_own_wallets())
        self._feed: BlockFeed | None = None
        self.metrics = ScanMetrics()
        self.book: DepositBook | None = None
        self.tip: Tip | None = None
        self.history_keep = max(HISTORY_KEEP_MIN, 4 * config.confirmations)
        self._last_account_id = 0
        self._last_refresh = 0.0
        self._last_prune = 0

    # -- start -------------------------------------------------------------------------------------
    def load_addresses(self) -> int:
        """Every assigned deposit address, read in id order and in chunks (bounded memory at start)."""
        while True:
            rows = (Account.select(Account.id, Account.deposit_address)
                    .where((Account.id > self._last_account_id) & Account.deposit_address.is_null(False))
                    .order_by(Account.id).limit(ADDRESS_LOAD_CHUNK).tuples())
            rows = list(rows)
            if not rows:
                return len(self.watch)
            self.watch.load(address for _, address in rows)
            self._last_account_id = rows[-1][0]

    def watch_address(self, address: str) -> None:
        # The load cursor (_last_account_id) stays where the last read left it: an address told here may be
        # newer than some assigned before BlockWatch was registered, which the catch-up read must still find.
        self.watch.add(address)

    @property
    def connected(self) -> bool:
        return self.book is not None

    def connect(self) -> int:
        """Check the nodes' chain id and load the cursor. Raises ChainError while no node answers."""
        chain_id = self.client.start()
        self.book = DepositBook(self.db, chain_id, dict(self.config.min_deposits), self.fence)
        self.txs.load()
        self._last_tx_reload = time.monotonic()
        self.tip = self.book.tip()
        self._last_refresh = time.monotonic()
        return chain_id

    # -- steps -------------------------------------------------------------------------------------
    def run(self, max_steps: int) -> m.ScanReport:
        """Up to `max_steps` steps, each followed by the credits it made due; stops when caught up or on the
        first error (logged and counted: the next tick retries with a new session, maybe on another node).
        Nothing a node or the database does stops the watcher for good."""
        steps = blocks = deposits = credited = reorgs = 0
        errors: list[str] = []
        result: StepResult | None = None
        while steps < max_steps:
            steps += 1
            try:
                if not self.connected:
                    self.connect()
                self.crediting.apply_holds(self.book)
                self._reload_tx_watch()
                result = self.step()
                if result.kind == "advanced" or self.crediting.retry_owed:
                    credited += self.credit_due()
            except FenceLost:
                self._drop(self._feed)
                raise  # another process watches now: this one stops (the actor system ends the process)
            except Exception as exc:  # noqa: BLE001 - see the docstring; each kind is logged as it deserves
                self._drop(self._feed)
                errors.append(self._step_failed(exc))
                break
            blocks += result.blocks
            deposits += result.deposits
            reorgs += result.kind == "reorg"
            if not result.behind:
                break
        self.metrics.steps += steps
        return m.ScanReport(steps=steps, tip=self.tip.height if self.tip else None, head=self.metrics.head,
                            blocks=blocks, deposits=deposits, credited=credited, reorgs=reorgs, errors=tuple(errors))

    def _reload_tx_watch(self) -> None:
        """Hashes signed while BlockWatch was down or whose news was lost are in the database: read it now and
        then (the news makes it immediate in the common case)."""
        now = time.monotonic()
        if now - self._last_tx_reload >= TX_WATCH_RELOAD_MS / 1000:
            self._last_tx_reload = now
            self.txs.load()

    @property
    def behind(self) -> bool:
        """More to read now (catching up, or rescanning after a reorg): the next step should not wait."""
        head, tip = self.metrics.head, self.tip
        return head is not None and tip is not None and tip.height < head

    def _step_failed(self, exc: Exception) -> str:
        self.metrics.step_errors += 1
        text = f"{type(exc).__name__}: {exc}"
        self.metrics.last_error = text[:500]
        if isinstance(exc, FatalChainError):
            log.error("scan step refused by the node; retried next tick", extra={"error": text})
        elif isinstance(exc, ChainError):
            log.warning("scan step abandoned; retried next tick", extra={"error": text})
        elif isinstance(exc, DeepReorg):
            log.critical("reorg deeper than the history kept: scanning stopped, operator needed",
                         extra={"error": text, "history_keep": self.history_keep})
        elif isinstance(exc, peewee.DatabaseError):
            log.error("database error in a scan step; retried next tick", extra={"error": text})
            self._reconnect()
        elif isinstance(exc, WalletError):
            log.error("scan step could not reach an actor; retried next tick", extra={"error": text})
        else:
            log.exception("scan step failed unexpectedly; retried next tick")
        return text

    def _reconnect(self) -> None:
        """A failed statement may have left the connection dead: hand it back and take a fresh one."""
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool drops it
            log.debug("closing a failed connection", exc_info=True)
        self.db.connect(reuse_if_open=True)

    def step(self) -> StepResult:
        session, feed = self._session_for_step()
        head = session.head()
        self.metrics.head = head
        tip = self.tip or self._fresh_start(head)
        self._catch_up_late_transactions(session)
        if head <= tip.height:
            self._drop(feed)  # blocks requested ahead are above this head now: the node no longer has them
            # No new block, but the node may have replaced ours (a reorg to a chain no longer than ours)
            if self._replaced(session, tip, head):
                return self._reorg(session, tip, head, None)
            return StepResult("idle", head, tip.height)
        batch = self.config.scan_batch_blocks
        if feed is None or feed.start != tip.height + 1:
            self._drop(feed)
            feed = BlockFeed(self.scanner, session, tip.height + 1, batch)
        feed.top_up(head, FEED_AHEAD_BATCHES * batch)
        numbers, fetched = feed.take(batch)
        logs = self.scanner.start_logs(session, numbers)
        blocks = self.scanner.blocks(tip, fetched)
        if isinstance(blocks, Mismatch):
            feed.cancel()
            return self._reorg(session, tip, head, blocks)
        self._feed = feed
        read = self.scanner.transfers(session, blocks, logs)
        if blocks[-1].number == numbers[-1]:
            feed.top_up(head, FEED_AHEAD_BATCHES * batch)
        else:  # the chain moved under the read: what was requested after the break is stale
            self._drop(feed)
        return self._record(read, head, self._our_transactions(session, read.blocks))

    def _our_transactions(self, session: NodeSession, blocks: Sequence[Block]) -> list[txwatch.SeenTx]:
        """Receipts of our watched transactions in these blocks (blockwatch/txwatch.py); the scanner checked
        that the chain did not change under the read."""
        hits = self.txs.in_blocks(blocks)
        if not hits:
            return []
        by_hash = {b.hash for b in blocks}
        receipts = [r for r in session.receipts(hits, missing_ok=True) if r is not None and r.block_hash in by_hash]
        if len(receipts) != len(hits):
            raise RetriableChainError("a receipt of our transaction is missing or in another block: the chain "
                                      "changed during the step", url=session.url)
        return txwatch.seen(receipts)

    def watch_transactions(self, hashes: Sequence[str]) -> None:
        self.txs.add(hashes)

    def _catch_up_late_transactions(self, session: NodeSession) -> None:
        """Hashes told after the block holding them may have been read: find them by receipt, on our chain."""
        if not self.txs.late or self.tip is None or self.book is None:
            return
        late = sorted(self.txs.late)
        receipts = [r for r in session.receipts(late, missing_ok=True) if r is not None]
        ours = self.book.hashes(min((r.block_number for r in receipts), default=0), self.tip.height) if receipts else {}
        found = [r for r in receipts if r.block_number <= self.tip.height and ours.get(r.block_number) == r.block_hash]
        if found:
            with fenced(self.db, self.fence):
                txwatch.record(self.db, self.book.chain_id, txwatch.seen(found))
        self.txs.late.difference_update(late)

    def _drop(self, feed: BlockFeed | None) -> None:
        if feed is not None:
            feed.cancel()
        if self._feed is feed:
            self._feed = None

    def _session_for_step(self) -> tuple[NodeSession, BlockFeed | None]:
        """The node for this step. Blocks requested ahead are used only if they come from the node active
        now, and then the whole step reads from that node through their session."""
        feed, self._feed = self._feed, None
        if feed is not None:
            # The step needs these blocks first anyway; and a node that serves requests in turn (anvil does,
            # for the most part) would hold a health check behind them, past its short timeout.
            feed.next_done(self.config.scan_batch_blocks)
        session = self._session()
        if feed is not None and feed.session.url == session.url:
            return feed.session, feed
        self._drop(feed)
        return session, None

    def _replaced(self, session: NodeSession, tip: Tip, head: int) -> bool:
        """Whether the node's block at min(head, tip) differs from ours (one header request)."""
        height = head if head < tip.height else tip.height
        ours = tip.block_hash if height == tip.height else self.book.hashes(height, height).get(height)
        if ours is None:
            return False  # below the first block scanned, or right after a fresh start
        return session.blocks([height], full=False)[0].hash != ours

    def _session(self) -> NodeSession:
        """A session on the node active now. Node health is refreshed every NODE_REFRESH_EVERY_S (so the primary
        is taken back once healthy), and at once when no node is usable (one may be back)."""
        now = time.monotonic()
        if now - self._last_refresh >= NODE_REFRESH_EVERY_S:
            self._last_refresh = now
            self.client.refresh()
        try:
            return self.client.session()
        except NoHealthyNode:
            self._last_refresh = now
            self.client.refresh()
            return self.client.session()

    def _fresh_start(self, head: int) -> Tip:
        start = self.config.start_block if self.config.start_block is not None else head
        self.tip = self.book.start_at(start)
        log.info("block watcher starts", extra={"chain_id": self.book.chain_id, "start_height": self.tip.start_height})
        return self.tip

    def _record(self, read: Forward, head: int, ours: Sequence[txwatch.SeenTx] = ()) -> StepResult:
        observations = self._resolve(read.transfers)
        outcome = self.book.record(read.blocks, observations, ours)
        last = read.blocks[-1]
        self.tip = Tip(last.number, last.hash, self.tip.start_height)
        self.metrics.scanned(len(read.blocks))
        self.metrics.deposits_recorded += outcome.new + outcome.revived
        self._prune()
        return StepResult("advanced", head, last.number, len(read.blocks), outcome.new + outcome.revived)

    def _resolve(self, transfers: Sequence[Transfer]) -> list[Observation]:
        """Confirm watch-set hits against the accounts table (a prefix hit is only a candidate)."""
        if not transfers:
            return []
        owners = dict(sql.select_in(self.db, "SELECT deposit_address, id FROM account WHERE deposit_address",
                                    sorted({t.to_address for t in transfers})))
        return [Observation(t.tx_hash, t.log_index, owners[t.to_address], t.to_address, t.asset, t.amount,
                            t.block_number, t.block_hash) for t in transfers if t.to_address in owners]

    def _prune(self) -> None:
        if self.tip.height - self._last_prune >= PRUNE_EVERY_BLOCKS:
            self.book.prune(self.history_keep, self.tip.height)
            self._last_prune = self.tip.height

    # -- reorgs ------------------------------------------------------------------------------------
    def _reorg(self, session: NodeSession, tip: Tip, head: int, mismatch: Mismatch | None) -> StepResult:
        """Walk back to the fork point and orphan what is above it. `mismatch` is the block after our tip
        that names another parent; None when the node's chain is no longer than ours and differs."""
        fork_height, fork_hash = self.scanner.find_fork(session, tip, min(head, tip.height), self.book.hashes,
                                                        self.book.oldest_height())
        if fork_height == tip.height:
            # The node still has our tip, yet its next block names another parent: its answers contradict
            # each other. Nothing is orphaned on that word; the node is dropped and the step retried.
            reason = (f"block {mismatch.height} names parent {mismatch.parent_hash}, but the node's block "
                      f"{tip.height} is {tip.block_hash}") if mismatch else f"block {tip.height} changed back"
            session.fail(reason)
            raise RetriableChainError(f"inconsistent node: {reason}", url=session.url)
        depth = tip.height - fork_height
        pending = self.book.pending_above(fork_height)
        outcome = self.book.orphan_above(fork_height, fork_hash, self.crediting.credits_applied(pending))
        self.tip = Tip(fork_height, fork_hash, tip.start_height)
        self.metrics.reorgs += 1
        self.metrics.reorg_depth_last = depth
        self.metrics.reorg_depth_max = max(self.metrics.reorg_depth_max, depth)
        log.warning("chain reorganisation", extra={"depth": depth, "fork_height": fork_height, "old_tip": tip.height,
                                                   "blocks_orphaned": outcome.blocks,
                                                   "deposits_orphaned": outcome.orphaned,
                                                   "deposits_flagged": len(outcome.flagged), "node": session.label})
        if outcome.flagged:
            self.crediting.flagged(outcome.flagged, depth)
        if outcome.settled_reorged:
            self.crediting.settled_then_reorged(outcome.settled_reorged, depth)
        return StepResult("reorg", head, fork_height)

    # -- credits -----------------------------------------------------------------------------------
    def credit_due(self) -> int:
        """Credit what the verified chain has confirmed enough, and settle our withdrawals likewise
        (blockwatch/crediting.py)."""
        if self.tip is None:
            return 0
        credited = self.crediting.credit_due(self.book, self.tip.height)
        self.crediting.settle_due(self.book.chain_id, self.tip.height, self.txs)
        return credited

    def close(self) -> None:
        """Stop the I/O threads (a request in flight ends within the client's timeout) and the client."""
        self._drop(self._feed)
        for pool in (self._blocks_pool, self._logs_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- reporting ---------------------------------------------------------------------------------
    def stats(self, detailed: bool = True) -> m.WatcherStats:
        metrics, credits = self.metrics, self.crediting.metrics
        head = metrics.head
        tip = self.tip.height if self.tip is not None else None
        lag = head - tip if head is not None and tip is not None else None
        counts = self.book.count_by_status() if detailed and self.book is not None else {}
        nodes = self.client.metrics() if self.connected else {}
        return m.WatcherStats(
            connected=self.connected, chain_id=self.book.chain_id if self.book is not None else None,
            tip=tip, head=head, scan_lag_blocks=lag, ready=lag is not None and lag <= self.config.scan_lag_max_blocks,
            blocks_per_s=round(metrics.blocks_per_s(), 1), blocks_scanned=metrics.blocks, steps=metrics.steps,
            step_errors=metrics.step_errors, last_error=metrics.last_error, reorgs=metrics.reorgs,
            reorg_depth_last=metrics.reorg_depth_last, reorg_depth_max=metrics.reorg_depth_max,
            deposits_recorded=metrics.deposits_recorded, deposits_credited=credits.deposits_credited,
            credit_failures=credits.credit_failures, credits_refused=credits.credits_refused,
            reorged_after_credit=credits.reorged_after_credit, deposits_by_status=tuple(sorted(counts.items())),
            watched_addresses=len(self.watch),
            nodes=tuple(m.NodeStats(n["label"], n["head"], n["healthy"]) for n in nodes.get("nodes", [])),
            active_node=nodes.get("active_label"), node_switches=nodes.get("switch_count", 0))


def _own_wallets() -> frozenset[str]:
    """The hot and gas wallets: what they send to a deposit address is a treasury move, never a deposit."""
    return frozenset(walletkeys.wallet_addresses().values())
