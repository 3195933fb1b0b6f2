"""Our own transactions on the chain BlockWatch verifies: every attempt's hash of a withdrawal that is not final
is watched; when a block BlockWatch records holds one, its receipt is stored (`tx_observation`) in the same
transaction as the block; once the block has `confirmations` on the canonical chain the owning shard settles
the withdrawal (blockwatch/crediting.py). A reorg that removes the block orphans the observation: the
withdrawal waits again (the signer sends the bytes again); if it had already settled, it is flagged.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import peewee

from chain.types import Block, Receipt
from storage import sql
from storage.models import TxAttempt, TxObservation, Withdrawal, now_ms

log = logging.getLogger(__name__)

WATCHED_STATUSES = ("signed", "broadcast")


@dataclasses.dataclass(frozen=True, slots=True)
class SeenTx:
    tx_hash: str
    block_number: int
    block_hash: str
    succeeded: bool
    gas_used: int
    effective_gas_price: int


@dataclasses.dataclass(frozen=True, slots=True)
class DueSettlement:
    observation_id: int
    withdrawal_id: int
    account_id: int
    shard: int
    tx_hash: str
    block_number: int
    succeeded: bool
    gas_paid: int


class TxWatch:
    def __init__(self) -> None:
        self.hashes: set[str] = set()
        self.late: set[str] = set()  # added after their block may have been read: looked up by receipt

    def load(self) -> int:
        """Every attempt of every withdrawal the signer still follows (after a start or to catch up)."""
        rows = (TxAttempt.select(TxAttempt.tx_hash).join(Withdrawal, on=(Withdrawal.id == TxAttempt.ref_id))
                .where((TxAttempt.purpose == "withdrawal") & Withdrawal.status.in_(WATCHED_STATUSES)).tuples())
        fresh = {h for (h,) in rows}
        self.late |= fresh - self.hashes
        self.hashes = fresh | (self.hashes & fresh)
        return len(self.hashes)

    def add(self, hashes: Iterable[str]) -> None:
        new = set(hashes) - self.hashes
        self.hashes |= new
        self.late |= new

    def discard(self, hashes: Iterable[str]) -> None:
        self.hashes.difference_update(hashes)
        self.late.difference_update(hashes)

    def in_blocks(self, blocks: Sequence[Block]) -> list[str]:
        if not self.hashes:
            return []
        return [tx.hash for block in blocks for tx in block.transactions if tx.hash in self.hashes]


def seen(receipts: Sequence[Receipt]) -> list[SeenTx]:
    return [SeenTx(r.tx_hash, r.block_number, r.block_hash, r.status == 1, r.gas_used, r.effective_gas_price)
            for r in receipts]


def record(db: peewee.Database, chain_id: int, txs: Sequence[SeenTx]) -> None:
    """Inside the step's transaction. A transaction seen again in the same block changes nothing."""
    if not txs:
        return
    known = {(h, b) for h, b in sql.select_in(
        db, f"SELECT tx_hash, block_hash FROM tx_observation WHERE chain_id = {int(chain_id)} AND tx_hash",
        [t.tx_hash for t in txs])}
    rows = [(chain_id, t.tx_hash, t.block_number, t.block_hash, t.succeeded, t.gas_used, str(t.effective_gas_price),
             False, False, now_ms()) for t in txs if (t.tx_hash, t.block_hash) not in known]
    sql.insert_many(db, "tx_observation", ("chain_id", "tx_hash", "block_number", "block_hash", "succeeded",
                                           "gas_used", "effective_gas_price", "orphaned", "settled", "created_at"), rows)
    for t in txs:
        log.info("our transaction is in a block", extra={"tx_hash": t.tx_hash, "block_number": t.block_number,
                                                         "succeeded": t.succeeded})


def orphan_above(chain_id: int, fork_height: int) -> list[int]:
    """Inside the reorg's transaction: observations above the fork leave the chain. Returns the withdrawals
    whose settlement was already applied (flagged by the caller)."""
    above = (TxObservation.chain_id == chain_id) & (TxObservation.block_number > fork_height) & (
        TxObservation.orphaned == False)  # noqa: E712
    settled = [h for (h,) in TxObservation.select(TxObservation.tx_hash).where(above & TxObservation.settled).tuples()]
    TxObservation.update(orphaned=True).where(above).execute()
    if not settled:
        return []
    return [r for (r,) in TxAttempt.select(TxAttempt.ref_id).where(TxAttempt.tx_hash.in_(settled)).tuples()]


def due(chain_id: int, tip_height: int, confirmations: int, limit: int) -> list[DueSettlement]:
    query = (TxObservation.select(TxObservation.id, Withdrawal.id, Withdrawal.account_id, Withdrawal.shard,
                                  TxObservation.tx_hash, TxObservation.block_number, TxObservation.succeeded,
                                  TxObservation.gas_used, TxObservation.effective_gas_price)
             .join(TxAttempt, on=(TxAttempt.tx_hash == TxObservation.tx_hash))
             .join(Withdrawal, on=(Withdrawal.id == TxAttempt.ref_id))
             .where((TxObservation.chain_id == chain_id) & (TxObservation.orphaned == False)  # noqa: E712
                    & (TxObservation.settled == False) & (TxAttempt.purpose == "withdrawal")  # noqa: E712
                    & (TxObservation.block_number <= tip_height - confirmations + 1))
             .order_by(TxObservation.block_number, TxObservation.id).limit(limit))
    return [DueSettlement(oid, wid, account, shard, tx_hash, block, bool(ok), gas_used * int(price))
            for oid, wid, account, shard, tx_hash, block, ok, gas_used, price in query.tuples()]


def mark_settled(observation_ids: Sequence[int]) -> None:
    if observation_ids:
        TxObservation.update(settled=True).where(TxObservation.id.in_(list(observation_ids))).execute()


def hashes_of(withdrawal_ids: Sequence[int]) -> list[str]:
    if not withdrawal_ids:
        return []
    return [h for (h,) in TxAttempt.select(TxAttempt.tx_hash).where(
        (TxAttempt.purpose == "withdrawal") & TxAttempt.ref_id.in_(list(withdrawal_ids))).tuples()]
