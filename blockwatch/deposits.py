"""BlockWatch's records, without threads: the chain cursor, the history of blocks read, and deposits with
their states. Every change that moves the cursor is one transaction with the rows it depends on, so a
crash leaves either the whole step or none of it.

Every state change writes its event (storage/events.py: deposit.seen, .confirmed, .orphaned,
.reorged_after_credit, .credit_failed) in the same transaction, for webhooks and the Redis stream.

Deposit states (DESIGN.md "States"):
    pending ──(confirmations ≥ N, shard credited)──▶ confirmed
    pending | below_minimum ──(block orphaned)──▶ orphaned ──(same transfer seen again)──▶ pending | below_minimum
    confirmed ──(block orphaned)──▶ reorged_after_credit   (flagged; the account is put on hold; never undone here)
    pending ──(shard refuses the credit for good, e.g. unknown asset)──▶ credit_failed ──(operator)──▶ pending
    credit_failed ──(block orphaned)──▶ orphaned
A deposit is identified by (chain, tx hash, log index); the log index of a token transfer is the one seen
first, so a re-included transfer keeps its identity (and its credit operation id) even if its position
in the new block differs.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterable, Sequence

import peewee

from blockwatch import txwatch
from chain.types import Block
from core.limits import DEPOSIT_MARK_CHUNK, DEPOSIT_OP_ID_MAX_LEN, DUE_CREDITS_MAX
from core.errors import ValidationError
from storage import sql, stafflog
from storage.events import record_events
from storage.fence import Fence, fenced
from storage.models import Account, ChainBlock, ChainCursor, Deposit, now_ms

log = logging.getLogger(__name__)

PENDING = "pending"
CONFIRMED = "confirmed"
ORPHANED = "orphaned"
REORGED_AFTER_CREDIT = "reorged_after_credit"
BELOW_MINIMUM = "below_minimum"
CREDIT_FAILED = "credit_failed"  # out of the due set: retrying cannot help, an operator looks at it
ON_CANONICAL_CHAIN = (PENDING, CONFIRMED, BELOW_MINIMUM, CREDIT_FAILED)

NATIVE_LOG_INDEX = -1  # an ETH transfer has no log


def deposit_event(kind: str, chain_id: int, tx_hash: str, log_index: int, account_id: int, address: str, asset: str,
                  amount: int, block_number: int, status: str) -> tuple[str, int, dict]:
    """An event row for storage.events.record_events: the deposit is named by its identity (chain, tx, log)."""
    return ("deposit." + kind, account_id, {
        "deposit": {"chain_id": chain_id, "tx_hash": tx_hash, "log_index": log_index, "address": address,
                    "asset": asset, "amount": str(amount), "block_number": block_number, "status": status}})


def deposit_op_id(chain_id: int, tx_hash: str, log_index: int) -> str:
    """The credit's operation id: the deposit's identity, so a replayed credit is a no-op."""
    op_id = f"d:{chain_id}:{tx_hash}:{log_index}"
    assert len(op_id) <= DEPOSIT_OP_ID_MAX_LEN, op_id
    return op_id


@dataclasses.dataclass(frozen=True, slots=True)
class Tip:
    """The last block whose deposits are recorded. `block_hash` is None right after a fresh start: the
    first block's parent is then taken on trust (nothing below `start_height` is ever read)."""

    height: int
    block_hash: str | None
    start_height: int


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """A transfer to a watched deposit address, seen in a block of the chain being scanned."""

    tx_hash: str
    log_index: int
    account_id: int
    address: str
    asset: str
    amount: int
    block_number: int
    block_hash: str

    @property
    def content(self) -> tuple[int, str, str, int]:
        return self.account_id, self.address, self.asset, self.amount


@dataclasses.dataclass(frozen=True, slots=True)
class DueCredit:
    deposit_id: int
    op_id: str
    account_id: int
    shard: int  # the account's shard, read with the deposit (a binding never changes)
    asset: str
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class Flagged:
    """A credited deposit whose block left the canonical chain."""

    deposit_id: int
    account_id: int
    asset: str
    amount: int
    tx_hash: str
    block_number: int


@dataclasses.dataclass
class RecordOutcome:
    new: int = 0  # deposits recorded for the first time
    revived: int = 0  # orphaned deposits seen again on the new chain
    conflicts: int = 0  # observations that could not be recorded (logged at CRITICAL)


@dataclasses.dataclass
class OrphanOutcome:
    blocks: int
    orphaned: int
    flagged: list[Flagged]
    settled_reorged: list[int] = dataclasses.field(default_factory=list)  # withdrawals settled, then reorged out


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    id: int
    log_index: int
    content: tuple[int, str, str, int]
    status: str


class DepositBook:
    def __init__(self, db: peewee.Database, chain_id: int, min_deposits: dict[str, int] | None = None,
                 fence: Fence | None = None) -> None:
        self.db = db
        self.fence = fence  # cluster mode: BlockWatch's epoch; every transaction of the book checks it first
        self.chain_id = chain_id
        self.min_deposits = dict(min_deposits or {})

    # -- cursor and history ------------------------------------------------------------------------
    def tip(self) -> Tip | None:
        row = ChainCursor.get_or_none(ChainCursor.chain_id == self.chain_id)
        return None if row is None else Tip(row.height, row.block_hash, row.start_height)

    def start_at(self, height: int) -> Tip:
        """A fresh start: the first block to scan is `height`. Written at once, so a restart resumes here
        instead of jumping to a newer head and skipping blocks."""
        tip = Tip(height - 1, None, height)
        ChainCursor.insert(chain_id=self.chain_id, height=tip.height, block_hash=None, start_height=height,
                           updated_at=now_ms()).on_conflict_ignore().execute()
        return self.tip() or tip

    def hashes(self, low: int, high: int) -> dict[int, str]:
        """Canonical (not orphaned) block hashes by height in [low, high], as recorded."""
        rows = (ChainBlock.select(ChainBlock.number, ChainBlock.block_hash)
                .where((ChainBlock.chain_id == self.chain_id) & (ChainBlock.number.between(low, high))
                       & (ChainBlock.orphaned == False))  # noqa: E712 - peewee expression
                .tuples())
        return dict(rows)

    def oldest_height(self) -> int | None:
        return (ChainBlock.select(peewee.fn.MIN(ChainBlock.number))
                .where((ChainBlock.chain_id == self.chain_id) & (ChainBlock.orphaned == False))  # noqa: E712
                .scalar())

    def prune(self, keep_below_tip: int, tip_height: int) -> int:
        """Forget blocks more than `keep_below_tip` under the tip: a reorg deeper than that is not
        followed automatically (it is reported). Deposits are never pruned."""
        return (ChainBlock.delete()
                .where((ChainBlock.chain_id == self.chain_id) & (ChainBlock.number < tip_height - keep_below_tip))
                .execute())

    # -- a forward step ----------------------------------------------------------------------------
    def record(self, blocks: Sequence[Block], observations: Sequence[Observation],
               ours: Sequence[txwatch.SeenTx] = ()) -> RecordOutcome:
        """Store blocks (parent-linked, ascending, following the tip), their deposits, our own transactions
        seen in them, and move the cursor to the last block: one transaction."""
        assert blocks, "record needs at least one block"
        now = now_ms()
        with fenced(self.db, self.fence):
            self._insert_blocks(blocks, now)
            outcome = self._record_observations(observations, now)
            txwatch.record(self.db, self.chain_id, ours)
            last = blocks[-1]
            (ChainCursor.update(height=last.number, block_hash=last.hash, updated_at=now)
             .where(ChainCursor.chain_id == self.chain_id).execute())
        return outcome

    def _insert_blocks(self, blocks: Sequence[Block], now: int) -> None:
        # A block orphaned earlier can come back with the same hash (a reorg undone): revive its row.
        in_chain = (ChainBlock.chain_id == self.chain_id) & ChainBlock.block_hash.in_([b.hash for b in blocks])
        known = dict(ChainBlock.select(ChainBlock.block_hash, ChainBlock.orphaned).where(in_chain).tuples())
        revived = [h for h, orphaned in known.items() if orphaned]
        if revived:  # rare (a reorg undone): no UPDATE in the common step
            ChainBlock.update(orphaned=False).where((ChainBlock.chain_id == self.chain_id)
                                                    & ChainBlock.block_hash.in_(revived)).execute()
        rows = [(self.chain_id, b.number, b.hash, b.parent_hash, False, now) for b in blocks if b.hash not in known]
        sql.insert_many(self.db, "chain_block", ("chain_id", "number", "block_hash", "parent_hash", "orphaned",
                                                 "seen_at"), rows)

    def _record_observations(self, observations: Sequence[Observation], now: int) -> RecordOutcome:
        outcome = RecordOutcome()
        if not observations:
            return outcome
        existing = self._rows_of_txs({o.tx_hash for o in observations})
        inserts: list[tuple] = []
        events: list[tuple[str, int, dict]] = []
        for tx_hash, seen in _group_by_tx(observations).items():
            for obs, row in self._match(seen, existing.get(tx_hash, [])):
                if row is None:
                    inserts.append(self._insert_row(obs, now))
                    outcome.new += 1
                elif self._seen_again(obs, row, now):
                    outcome.revived += 1
                else:
                    outcome.conflicts += 1
                    continue
                if row is None or row.status == ORPHANED:
                    events.append(self._event("seen", obs, self._initial_status(obs.asset, obs.amount)))
        sql.insert_many(self.db, "deposit", ("chain_id", "tx_hash", "log_index", "account_id", "address", "asset",
                                             "amount", "block_number", "block_hash", "status", "created_at",
                                             "updated_at"), inserts)
        record_events(self.db, events, now)
        return outcome

    def _event(self, kind: str, obs: Observation, status: str) -> tuple[str, int, dict]:
        return deposit_event(kind, self.chain_id, obs.tx_hash, obs.log_index, obs.account_id, obs.address, obs.asset,
                             obs.amount, obs.block_number, status)

    def _row_event(self, kind: str, row: Deposit, status: str) -> tuple[str, int, dict]:
        return deposit_event(kind, self.chain_id, row.tx_hash, row.log_index, row.account_id, row.address, row.asset,
                             row.amount, row.block_number, status)

    def _rows_of_txs(self, tx_hashes: set[str]) -> dict[str, list[_Row]]:
        rows = sql.select_in(
            self.db, "SELECT id, tx_hash, log_index, account_id, address, asset, amount, status FROM deposit "
                     f"WHERE chain_id = {int(self.chain_id)} AND tx_hash", sorted(tx_hashes))
        by_tx: dict[str, list[_Row]] = collections.defaultdict(list)
        for row_id, tx_hash, log_index, account_id, address, asset, amount, status in rows:
            by_tx[tx_hash].append(_Row(row_id, log_index, (account_id, address, asset, int(amount)), status))
        return by_tx

    @staticmethod
    def _match(seen: list[Observation], rows: list[_Row]) -> list[tuple[Observation, _Row | None]]:
        """Pair each observation of one tx with the row that records the same transfer: same log index
        and content first, then same content among rows off the chain (a re-included transfer may sit
        at another log index), then a row off the chain under the same key (re-executed with another
        amount). Unpaired observations are new deposits."""
        free = list(rows)
        pairs: list[tuple[Observation, _Row | None]] = []
        rules = (
            lambda o, r: r.log_index == o.log_index and r.content == o.content,
            lambda o, r: r.status not in ON_CANONICAL_CHAIN and r.content == o.content,
            lambda o, r: r.log_index == o.log_index,
        )
        pending = list(seen)
        for rule in rules:
            unmatched = []
            for obs in pending:
                row = next((r for r in free if rule(obs, r)), None)
                if row is None:
                    unmatched.append(obs)
                else:
                    free.remove(row)
                    pairs.append((obs, row))
            pending = unmatched
        pairs.extend((obs, None) for obs in pending)
        return pairs

    def _initial_status(self, asset: str, amount: int) -> str:
        return BELOW_MINIMUM if amount < self.min_deposits.get(asset, 1) else PENDING

    def _insert_row(self, obs: Observation, now: int) -> tuple:
        return (self.chain_id, obs.tx_hash, obs.log_index, obs.account_id, obs.address, obs.asset, str(obs.amount),
                obs.block_number, obs.block_hash, self._initial_status(obs.asset, obs.amount), now, now)

    def _seen_again(self, obs: Observation, row: _Row, now: int) -> bool:
        """A recorded transfer is on the new chain again. Returns False if it cannot be recorded."""
        where = Deposit.id == row.id
        if row.status == ORPHANED:
            # never credited, so its content may follow what the new chain says
            Deposit.update(account_id=obs.account_id, address=obs.address, asset=obs.asset, amount=obs.amount,
                           block_number=obs.block_number, block_hash=obs.block_hash,
                           status=self._initial_status(obs.asset, obs.amount), updated_at=now).where(where).execute()
            return True
        if row.status == REORGED_AFTER_CREDIT and row.content == obs.content:
            # credited, reorged out, now back: the ledger is right again, but the operator decides
            Deposit.update(block_number=obs.block_number, block_hash=obs.block_hash, updated_at=now).where(
                where).execute()
            log.warning("a deposit credited and reorged out is back on the chain; its account stays on hold "
                        "for an operator", extra={"deposit_id": row.id, "tx_hash": obs.tx_hash,
                                                  "block_number": obs.block_number})
            return True
        log.critical("a transfer seen on chain conflicts with a recorded deposit; not recorded, operator needed",
                     extra={"deposit_id": row.id, "status": row.status, "tx_hash": obs.tx_hash,
                            "log_index": obs.log_index, "asset": obs.asset, "amount": str(obs.amount)})
        return False

    # -- reorgs ------------------------------------------------------------------------------------
    def pending_above(self, fork_height: int) -> list[DueCredit]:
        """Pending deposits in blocks above the fork: a credit of one may already be applied."""
        return self._credits((Deposit.chain_id == self.chain_id) & (Deposit.status == PENDING)
                             & (Deposit.block_number > fork_height))

    def _credits(self, where: peewee.Expression, limit: int | None = None) -> list[DueCredit]:
        query = (Deposit.select(Deposit.id, Deposit.tx_hash, Deposit.log_index, Deposit.account_id, Account.shard,
                                Deposit.asset, Deposit.amount)
                 .join(Account, on=(Account.id == Deposit.account_id)).where(where)
                 .order_by(Deposit.block_number, Deposit.id).limit(limit))
        return [DueCredit(i, deposit_op_id(self.chain_id, tx, li), acct, shard, asset, amount)
                for i, tx, li, acct, shard, asset, amount in query.tuples()]

    def orphan_above(self, fork_height: int, fork_hash: str | None, credited_op_ids: Iterable[str] = ()) -> OrphanOutcome:
        """Blocks above the fork left the chain: mark them, their deposits, and move the cursor back to the
        fork, in one transaction. `credited_op_ids` are pending deposits whose credit was found applied:
        they are treated as confirmed (so they are flagged, not quietly orphaned)."""
        credited = set(credited_op_ids)
        now = now_ms()
        with fenced(self.db, self.fence):
            blocks = (ChainBlock.update(orphaned=True)
                      .where((ChainBlock.chain_id == self.chain_id) & (ChainBlock.number > fork_height)
                             & (ChainBlock.orphaned == False))  # noqa: E712
                      .execute())
            rows = list(Deposit.select().where((Deposit.chain_id == self.chain_id)
                                               & (Deposit.block_number > fork_height)
                                               & (Deposit.status.in_(ON_CANONICAL_CHAIN))))
            flagged: list[Flagged] = []
            orphaned_ids: list[int] = []
            events: list[tuple[str, int, dict]] = []
            for row in rows:
                op_id = deposit_op_id(self.chain_id, row.tx_hash, row.log_index)
                if row.status == CONFIRMED or op_id in credited:
                    flagged.append(Flagged(row.id, row.account_id, row.asset, row.amount, row.tx_hash,
                                           row.block_number))
                    Deposit.update(status=REORGED_AFTER_CREDIT, credited_op_id=op_id, updated_at=now).where(
                        Deposit.id == row.id).execute()
                    events.append(self._row_event(REORGED_AFTER_CREDIT, row, REORGED_AFTER_CREDIT))
                else:
                    orphaned_ids.append(row.id)
                    events.append(self._row_event(ORPHANED, row, ORPHANED))
            if orphaned_ids:
                Deposit.update(status=ORPHANED, updated_at=now).where(Deposit.id.in_(orphaned_ids)).execute()
            record_events(self.db, events, now)
            settled_reorged = txwatch.orphan_above(self.chain_id, fork_height)
            (ChainCursor.update(height=fork_height, block_hash=fork_hash, updated_at=now)
             .where(ChainCursor.chain_id == self.chain_id).execute())
        return OrphanOutcome(blocks, len(orphaned_ids), flagged, settled_reorged)

    # -- crediting ---------------------------------------------------------------------------------
    def due(self, tip_height: int, confirmations: int, limit: int = DUE_CREDITS_MAX) -> list[DueCredit]:
        """Pending deposits with at least `confirmations` blocks on our verified chain (the block itself
        counts: confirmations = tip − height + 1)."""
        return self._credits((Deposit.status == PENDING) & (Deposit.chain_id == self.chain_id)
                             & (Deposit.block_number <= tip_height - confirmations + 1), limit)

    def mark_confirmed(self, credits: Sequence[DueCredit]) -> int:
        """Record credits the shards acknowledged, a bounded statement per chunk. Only pending rows move: a
        row orphaned meanwhile is left to the reorg logic."""
        now = now_ms()
        changed = 0
        p = self.db.param
        with fenced(self.db, self.fence):
            for start in range(0, len(credits), DEPOSIT_MARK_CHUNK):
                part = credits[start:start + DEPOSIT_MARK_CHUNK]
                moving = list(Deposit.select().where((Deposit.status == PENDING)
                                                     & Deposit.id.in_([c.deposit_id for c in part])))
                record_events(self.db, [self._row_event(CONFIRMED, row, CONFIRMED) for row in moving], now)
                cases = " ".join(f"WHEN {p} THEN {p}" for _ in part)
                params: list = [CONFIRMED]
                for credit in part:
                    params += [credit.deposit_id, credit.op_id]
                params += [now, PENDING, *(c.deposit_id for c in part)]
                cursor = self.db.execute_sql(
                    f"UPDATE deposit SET status = {p}, credited_op_id = CASE id {cases} END, updated_at = {p} "
                    f"WHERE status = {p} AND id IN ({', '.join([p] * len(part))})", params)
                changed += cursor.rowcount
        return changed

    def mark_credit_failed(self, credits: Sequence[DueCredit]) -> int:
        """Take credits a shard refused for good out of the due set. Only pending rows move."""
        changed = 0
        now = now_ms()
        for start in range(0, len(credits), DEPOSIT_MARK_CHUNK):
            part = [c.deposit_id for c in credits[start:start + DEPOSIT_MARK_CHUNK]]
            with fenced(self.db, self.fence):
                moving = list(Deposit.select().where((Deposit.status == PENDING) & Deposit.id.in_(part)))
                record_events(self.db, [self._row_event(CREDIT_FAILED, row, CREDIT_FAILED) for row in moving], now)
                changed += (Deposit.update(status=CREDIT_FAILED, updated_at=now)
                            .where((Deposit.status == PENDING) & Deposit.id.in_(part)).execute())
        return changed

    # -- holds -------------------------------------------------------------------------------------
    def holds_owed(self) -> list[Flagged]:
        """Flagged deposits whose account hold is not applied yet (a crash or an unanswered ask)."""
        query = Deposit.select().where((Deposit.chain_id == self.chain_id)
                                       & (Deposit.status == REORGED_AFTER_CREDIT) & Deposit.held_at.is_null())
        return [Flagged(r.id, r.account_id, r.asset, r.amount, r.tx_hash, r.block_number) for r in query]

    def mark_held(self, deposit_ids: Sequence[int]) -> None:
        if deposit_ids:
            Deposit.update(held_at=now_ms()).where(Deposit.id.in_(list(deposit_ids))).execute()

    # -- reporting ---------------------------------------------------------------------------------
    def count_by_status(self) -> dict[str, int]:
        rows = (Deposit.select(Deposit.status, peewee.fn.COUNT(Deposit.id))
                .where(Deposit.chain_id == self.chain_id).group_by(Deposit.status).tuples())
        return dict(rows)


def retry_failed_credit(db: peewee.Database, deposit_id: int, actor: stafflog.Actor, reason: str) -> Deposit:
    """An operator sets a credit_failed deposit back to pending (the cause is fixed, e.g. the asset is configured
    again); the next step credits it. A conditional UPDATE, with the staff log row in its transaction: a deposit
    that moved meanwhile changes nothing and logs nothing."""
    with db.atomic():
        row = Deposit.get_or_none(Deposit.id == deposit_id)
        if row is None:
            raise ValidationError(f"no deposit {deposit_id}")
        changed = (Deposit.update(status=PENDING, updated_at=now_ms())
                   .where((Deposit.id == deposit_id) & (Deposit.status == CREDIT_FAILED)).execute())
        if changed != 1:
            raise ValidationError(f"deposit {deposit_id} is {row.status}, not {CREDIT_FAILED}")
        stafflog.append(db, actor, "deposit.retry_credit", f"deposit:{deposit_id}",
                        {"reason": reason, "account_id": row.account_id, "asset": row.asset, "amount": str(row.amount),
                         "tx_hash": row.tx_hash, "log_index": row.log_index})
    log.warning("failed deposit credit set back to pending by an operator",
                extra={"deposit_id": deposit_id, "by": actor.name})
    return row


def _group_by_tx(observations: Sequence[Observation]) -> dict[str, list[Observation]]:
    by_tx: dict[str, list[Observation]] = collections.defaultdict(list)
    for obs in observations:
        by_tx[obs.tx_hash].append(obs)
    return by_tx
