"""Reading one scan step from one node: the blocks after the tip, checked to link to it and to each other,
and the transfers in them to watched addresses. Also the walk back to the fork point after a reorg.

Everything here reads through one NodeSession, so one step never mixes two nodes' views of the chain.
Nothing here writes: the caller records what a step read (blockwatch.deposits.DepositBook) in one transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from concurrent.futures import Executor, Future
from typing import Callable, Mapping, Sequence

from chain.session import NodeSession
from chain.erc20 import TRANSFER_TOPIC, decode_transfer
from chain.errors import RetriableChainError
from chain.types import Block, Log, Tx
from blockwatch.watchset import WatchSet
from blockwatch.deposits import NATIVE_LOG_INDEX, Tip
from core.limits import AMOUNT_LIMIT, FETCH_PARALLEL, FETCH_PART_MIN, FORK_WINDOW_FIRST

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer to a watched address (a candidate: its account is resolved by the caller)."""

    tx_hash: str
    log_index: int  # NATIVE_LOG_INDEX for ETH
    to_address: str
    asset: str
    amount: int
    block_number: int
    block_hash: str


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """Blocks that follow the tip (parent-linked, ascending) and their transfers to watched addresses."""

    blocks: tuple[Block, ...]
    transfers: tuple[Transfer, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Mismatch:
    """The node's block after the tip does not name the tip as its parent: a reorg (or a lying node)."""

    height: int
    parent_hash: str


class DeepReorg(Exception):
    """The fork point is below the history BlockWatch keeps: it cannot tell what changed by itself."""


class BlockFeed:
    """Blocks requested ahead of the tip, in parts, all through one session (one node), so the node always
    has work: it serializes the next parts while this process parses and records the previous ones. Each
    request is a part of about batch/FETCH_PARALLEL blocks; parts are kept requested up to `ahead` blocks
    past the first one not yet taken."""

    def __init__(self, scanner: Scanner, session: NodeSession, start: int, batch: int) -> None:
        self.scanner = scanner
        self.session = session
        self.start = start  # first block not taken yet
        self._next = start  # first block not requested yet
        self._part = max(FETCH_PART_MIN, -(-batch // FETCH_PARALLEL))
        self._parts: collections.deque[tuple[range, Future]] = collections.deque()

    def top_up(self, head: int, ahead: int) -> None:
        while self._next <= head and self._next - self.start < ahead:
            numbers = range(self._next, min(head, self._next + self._part - 1) + 1)
            self._parts.append((numbers, self.scanner.fetch(self.session, numbers)))
            self._next = numbers[-1] + 1

    def take(self, count: int) -> tuple[range, list[Future]]:
        """The next requested parts covering up to `count` blocks (at least one part)."""
        taken = [self._parts.popleft()]
        while self._parts and taken[-1][0][-1] - taken[0][0][0] + len(self._parts[0][0]) < count:
            taken.append(self._parts.popleft())
        numbers = range(taken[0][0][0], taken[-1][0][-1] + 1)
        self.start = numbers[-1] + 1
        return numbers, [future for _, future in taken]

    def cancel(self) -> None:
        """Drop what is not requested from the node yet (the feed is stale: a reorg, another node)."""
        for _, future in self._parts:
            future.cancel()
        self._parts.clear()

    def next_done(self, count: int) -> None:
        """Wait until the parts the next `take(count)` returns are in."""
        covered = 0
        for numbers, future in self._parts:
            if covered >= count:
                break
            future.exception()
            covered += len(numbers)


class Scanner:
    """Reads a step in two halves: `blocks()` (whose parts the caller requested ahead, see BlockFeed, and
    whose logs are on their way, see `start_logs`), then `transfers()`. Requests run on executor threads:
    waiting for a node releases the GIL."""

    def __init__(self, watch: WatchSet, tokens: Mapping[str, str], blocks_executor: Executor,
                 logs_executor: Executor, own_senders: frozenset[str] = frozenset()) -> None:
        """`tokens`: configured ERC-20 contracts, lowercase address -> asset symbol. A Transfer log of any
        other contract is ignored, whatever it calls itself. `own_senders` (lowercase): the service's own
        wallets; ETH they send to a deposit address (the gas top-up before a token sweep) is no deposit."""
        self.watch = watch
        self.own_senders = frozenset(a.lower() for a in own_senders)
        self.tokens = dict(tokens)
        self.blocks_executor = blocks_executor
        self.logs_executor = logs_executor  # apart, so logs never queue behind blocks requested ahead

    # -- forward -----------------------------------------------------------------------------------
    def fetch(self, session: NodeSession, numbers: range) -> Future:
        """Full blocks, fetched in the background on that session's node."""
        return self.blocks_executor.submit(session.blocks, numbers, True)

    def start_logs(self, session: NodeSession, numbers: range) -> Future | None:
        """Transfer logs of the configured tokens in the range, fetched while the blocks are read."""
        if not self.tokens:
            return None
        return self.logs_executor.submit(session.logs, numbers[0], numbers[-1], sorted(self.tokens),
                                         [TRANSFER_TOPIC])

    def blocks(self, tip: Tip, fetched: Sequence[Future]) -> tuple[Block, ...] | Mismatch:
        """The blocks after the tip (parts from `fetch`, in order) that link to it and to each other."""
        blocks = [block for part in fetched for block in part.result()]
        if tip.block_hash is not None and blocks[0].parent_hash != tip.block_hash:
            return Mismatch(blocks[0].number, blocks[0].parent_hash)
        return tuple(_linked_prefix(blocks))

    def transfers(self, session: NodeSession, blocks: Sequence[Block], logs: Future | None) -> Forward:
        """Transfers to watched addresses in these blocks: ETH (receipt status 1) and token Transfer logs.

        Logs and receipts come in later requests than the blocks (a prefetch may be a step older): the
        node's chain is checked to still hold the last block first. Otherwise logs of a replaced block
        would be missing without a trace, and receipts of its transactions would be missing loudly."""
        found = self._tokens(session, logs.result(), {b.number: b for b in blocks}) if logs is not None else []
        candidates = self._native_candidates(blocks)
        if logs is not None or candidates:
            _check_unchanged(session, blocks[-1])
        found += self._native(session, candidates)
        found.sort(key=lambda t: (t.block_number, t.log_index, t.tx_hash))
        return Forward(tuple(blocks), tuple(found))

    def _native_candidates(self, blocks: Sequence[Block]) -> list[Tx]:
        watch, own = self.watch, self.own_senders
        return [tx for b in blocks for tx in b.transactions
                if tx.value > 0 and tx.to_address is not None and tx.to_address in watch
                and not (own and tx.from_address.lower() in own)]

    def _native(self, session: NodeSession, candidates: Sequence[Tx]) -> list[Transfer]:
        if not candidates:
            return []
        # missing_ok: a reorg after the check of the last block removes receipts; that is no fault of the node
        receipts = session.receipts([tx.hash for tx in candidates], missing_ok=True)
        transfers = []
        for tx, receipt in zip(candidates, receipts):
            if receipt is None or receipt.block_hash != tx.block_hash:
                where = "missing" if receipt is None else f"in block {receipt.block_hash}"
                raise RetriableChainError(f"receipt of {tx.hash} is {where}, the block read says {tx.block_hash}: "
                                          "the chain changed during the step", url=session.url)
            if receipt.status == 1:  # a reverted transaction moved nothing
                transfers.append(Transfer(tx.hash, NATIVE_LOG_INDEX, tx.to_address, "ETH", tx.value,
                                          tx.block_number, tx.block_hash))
        return transfers

    def _tokens(self, session: NodeSession, logs: Sequence[Log], by_number: Mapping[int, Block]) -> list[Transfer]:
        transfers = []
        for item in logs:
            block = by_number.get(item.block_number)
            if block is None:
                continue  # above the linked prefix: read again with its block next step
            _check_log(session, item, block)
            transfer = self._token_transfer(item)
            if transfer is not None:
                transfers.append(transfer)
        return transfers

    def _token_transfer(self, item: Log) -> Transfer | None:
        # Most transfers go elsewhere: test the raw `to` topic against the watch set before decoding (and
        # checksumming) anything. A hit is decoded strictly below.
        if len(item.topics) != 3 or "0x" + item.topics[2][26:] not in self.watch:
            return None
        asset = self.tokens.get(item.address.lower())
        decoded = decode_transfer(item)
        if asset is None or decoded is None:
            return None
        _, to_address, amount = decoded
        if amount <= 0 or to_address not in self.watch:
            return None
        if amount >= AMOUNT_LIMIT:
            # A uint256 beyond what the ledger holds: recording it would fail the step on every retry and
            # stop every deposit behind it. Left out, loudly, for an operator.
            log.critical("token transfer to a deposit address exceeds the ledger's amount limit; not recorded",
                         extra={"tx_hash": item.tx_hash, "log_index": item.log_index, "asset": asset,
                                "to_address": to_address, "amount": str(amount)})
            return None
        return Transfer(item.tx_hash, item.log_index, to_address, asset, amount, item.block_number, item.block_hash)

    # -- reorgs ------------------------------------------------------------------------------------
    def find_fork(self, session: NodeSession, tip: Tip, high: int, stored: Callable[[int, int], dict[int, str]],
                  oldest: int | None) -> tuple[int, str | None]:
        """The highest height at or below `high` (the tip, or the node's head if lower) where the node's
        block is the one we recorded: (height, hash). Compares windows of growing size, newest first. Below
        the first block ever scanned nothing was recorded, so `start_height - 1` is a fork point by
        definition; below pruned history it is a DeepReorg."""
        floor = tip.start_height
        lowest = tip.height + 1 if oldest is None else max(oldest, floor)  # lowest height we can compare
        window = FORK_WINDOW_FIRST
        while high >= lowest:
            low = max(high - window + 1, lowest)
            ours = stored(low, high)
            theirs = session.blocks(range(low, high + 1), full=False)
            for block in reversed(theirs):
                if ours.get(block.number) == block.hash:
                    return block.number, block.hash
            high = low - 1
            window *= 2
        if lowest <= floor:
            return floor - 1, None
        raise DeepReorg(f"no common block with the node from the tip {tip.height} down to {lowest}, the oldest "
                        "block kept")


def _linked_prefix(blocks: list[Block]) -> list[Block]:
    """The blocks up to the first whose parent is not the block before it. A break inside one answer means
    the chain moved while the node answered; the rest is read again next step."""
    for i in range(1, len(blocks)):
        if blocks[i].parent_hash != blocks[i - 1].hash:
            log.info("chain moved during a read; keeping the linked part",
                     extra={"linked_to": blocks[i - 1].number, "read_to": blocks[-1].number})
            return blocks[:i]
    return blocks


def _check_log(session: NodeSession, item: Log, block: Block) -> None:
    if item.removed or item.block_hash != block.hash:
        raise RetriableChainError(f"log {item.log_index} of block {item.block_number} is from block "
                                  f"{item.block_hash} (removed={item.removed}), the block read is {block.hash}: "
                                  "the chain changed during the step", url=session.url, method="eth_getLogs")


def _check_unchanged(session: NodeSession, last: Block) -> None:
    """The last block unchanged on the node means every block under it is too."""
    now = session.blocks([last.number], full=False)[0]
    if now.hash != last.hash:
        raise RetriableChainError(f"block {last.number} changed from {last.hash} to {now.hash} during the step",
                                  url=session.url)
