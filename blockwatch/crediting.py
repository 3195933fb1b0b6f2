"""Acting on what the chain follower found: credit deposits with enough confirmations through their shards,
put the accounts of credited-then-reorged deposits on hold (through the allocator, the writer of accounts),
and tell the follower which pending deposits were credited before it orphans them.

The follower (blockwatch/watcher.py) knows the chain and nothing of actors; this class knows the actors and
nothing of the chain. It reaches them through `ActorPort` (actors.router.Router in the service), so this
package never imports the actor layer above it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Protocol, Sequence

import peewee

from blockwatch import txwatch
from blockwatch.deposits import DepositBook, DueCredit, Flagged
from core import messages as m
from core.errors import WalletError, refused_for_good
from core.limits import DUE_CREDITS_MAX
from storage import sql
from storage.models import Withdrawal, now_ms

log = logging.getLogger(__name__)


class ActorPort(Protocol):
    def ask_shard(self, shard: int, message: Any, timeout: float | None = None) -> Any: ...

    def ask_actor(self, name: str, message: Any, timeout: float | None = None) -> Any: ...

    def ask_shards(self, asks: Sequence[tuple[int, Any]], timeout: float | None = None) -> list[Any]:
        """Every ask sent before any answer is awaited; one answer or WalletError per ask, in order."""
        ...


@dataclasses.dataclass
class CreditMetrics:
    deposits_credited: int = 0
    credit_failures: int = 0
    credits_refused: int = 0  # deposits moved to credit_failed (an operator looks at each)
    reorged_after_credit: int = 0
    withdrawals_settled: int = 0


class Crediting:
    def __init__(self, actors: ActorPort, db: peewee.Database, confirmations: int) -> None:
        self.actors = actors
        self.db = db
        self.confirmations = confirmations
        self.metrics = CreditMetrics()
        self.holds_owed = True  # checked once at start: a crash may have left flagged deposits unheld
        self.retry_owed = True  # credits may be due without a new block (from before a restart, or failed)

    # -- credits -------------------------------------------------------------------------------------
    def credit_due(self, book: DepositBook, tip_height: int) -> int:
        """Ask the owning shards to credit every deposit with enough confirmations; mark those answered."""
        due = book.due(tip_height, self.confirmations)
        if not due:
            self.retry_owed = False
            return 0
        answered, refused = self._ask_credits(due)
        book.mark_confirmed(answered)
        book.mark_credit_failed(refused)
        self.metrics.deposits_credited += len(answered)
        self.metrics.credits_refused += len(refused)
        self.retry_owed = len(answered) + len(refused) < len(due) or len(due) >= DUE_CREDITS_MAX
        return len(answered)

    def _ask_credits(self, due: Sequence[DueCredit]) -> tuple[list[DueCredit], list[DueCredit]]:
        """All asks go out before any answer is awaited, so a shard commits them as one batch. Returns the
        credits answered, and those refused for good (see refused_for_good)."""
        asks = [(c.shard, m.Credit(op_id=c.op_id, account_id=c.account_id, asset=c.asset, amount=c.amount))
                for c in due]
        answered, refused = [], []
        for credit, reply in zip(due, self.actors.ask_shards(asks)):
            if not isinstance(reply, Exception):
                answered.append(credit)
            elif self._credit_failed(credit, reply):
                refused.append(credit)
        return answered, refused

    def _credit_failed(self, credit: DueCredit, error: Exception) -> bool:
        """Logs a credit that was not acknowledged; True if retrying cannot help."""
        self.metrics.credit_failures += 1
        details = {"deposit_id": credit.deposit_id, "op_id": credit.op_id, "account_id": credit.account_id,
                   "asset": credit.asset, "amount": str(credit.amount), "error": f"{type(error).__name__}: {error}"}
        if refused_for_good(error):
            # Retrying cannot help, and left pending it would hold a place in every due batch (starving newer
            # deposits once a batch is full of them): it leaves the due set, for an operator.
            log.error("deposit credit refused by its shard; marked credit_failed for an operator (set it back "
                      "to pending once the cause is fixed)", extra=details)
            return True
        log.error("deposit credit not acknowledged; retried next step", extra=details)
        return False

    # -- reorgs --------------------------------------------------------------------------------------
    def credits_applied(self, pending: Sequence[DueCredit]) -> set[str]:
        """Which of these pending deposits were credited already (an answer lost to a timeout, or to a crash
        or restart of BlockWatch before the deposit was marked). A credit asked earlier, maybe by a BlockWatch
        that has restarted since, may still wait in its shard's mailbox: every owning shard is pinged first,
        and answers only after the commands queued before the Ping are committed. A shard that does not
        answer fails the step (Unavailable): nothing is orphaned while a credit of it may still land."""
        if not pending:
            return set()
        for shard in sorted({c.shard for c in pending}):
            self.actors.ask_shard(shard, m.Ping())
        rows = sql.select_in(self.db, "SELECT op_id FROM operation WHERE op_id", [c.op_id for c in pending])
        return {op_id for (op_id,) in rows}

    def flagged(self, flagged: Sequence[Flagged], depth: int) -> None:
        """Credited deposits whose block left the chain: alert, and owe their accounts a hold."""
        self.metrics.reorged_after_credit += len(flagged)
        self.holds_owed = True
        for item in flagged:
            log.critical("credited deposit reorged out of the chain: account put on hold for an operator; the "
                         "ledger is not changed", extra={"deposit_id": item.deposit_id, "account_id": item.account_id,
                                                         "asset": item.asset, "amount": str(item.amount),
                                                         "tx_hash": item.tx_hash, "block_number": item.block_number,
                                                         "reorg_depth": depth})

    # -- our withdrawals ---------------------------------------------------------------------------------
    def settle_due(self, chain_id: int, tip_height: int, watch: txwatch.TxWatch) -> int:
        """Have the owning shards settle every withdrawal whose transaction has enough confirmations on the
        canonical chain; mark those answered and stop watching their hashes."""
        due = txwatch.due(chain_id, tip_height, self.confirmations, DUE_CREDITS_MAX)
        if not due:
            return 0
        asks = [(d.shard, m.SettleWithdrawal(op_id=f"s:{d.withdrawal_id}", account_id=d.account_id,
                                             withdrawal_id=d.withdrawal_id, tx_hash=d.tx_hash,
                                             succeeded=int(d.succeeded), gas_paid=d.gas_paid,
                                             block_number=d.block_number)) for d in due]
        done, refused = [], []
        for settlement, reply in zip(due, self.actors.ask_shards(asks)):
            if not isinstance(reply, Exception):
                done.append(settlement)
            elif refused_for_good(reply):
                refused.append(settlement)
                log.critical("a shard refused to settle a withdrawal whose transaction is final; operator needed",
                             extra={"withdrawal_id": settlement.withdrawal_id, "tx_hash": settlement.tx_hash,
                                    "error": f"{type(reply).__name__}: {reply}"})
            else:
                log.warning("withdrawal settlement not acknowledged; retried next step",
                            extra={"withdrawal_id": settlement.withdrawal_id, "error": str(reply)})
        txwatch.mark_settled([d.observation_id for d in done + refused])
        watch.discard(txwatch.hashes_of([d.withdrawal_id for d in done + refused]))
        self.metrics.withdrawals_settled += len(done)
        return len(done)

    def settled_then_reorged(self, withdrawal_ids: Sequence[int], depth: int) -> None:
        """A settled withdrawal's block left the chain (a reorg deeper than the confirmations): never "fixed"
        silently. The withdrawal is flagged for an operator; the ledger is not changed."""
        for withdrawal_id in withdrawal_ids:
            log.critical("a settled withdrawal's transaction was reorged out of the chain; operator needed",
                         extra={"withdrawal_id": withdrawal_id, "reorg_depth": depth})
        if withdrawal_ids:
            (Withdrawal.update(needs_operator=True, operator_reason="its settled transaction was reorged out of the "
                                                                   "chain; check whether it is mined again",
                               updated_at=now_ms())
             .where(Withdrawal.id.in_(list(withdrawal_ids))).execute())

    # -- holds ---------------------------------------------------------------------------------------
    def apply_holds(self, book: DepositBook) -> int:
        """Put the accounts of flagged deposits on hold (through the allocator, the writer of accounts)."""
        if not self.holds_owed:
            return 0
        owed = book.holds_owed()
        by_account: dict[int, list[Flagged]] = collections.defaultdict(list)
        for item in owed:
            by_account[item.account_id].append(item)
        held: list[int] = []
        for account_id, items in by_account.items():
            reason = (f"{len(items)} credited deposit(s) reorged out of the chain, e.g. {items[0].asset} "
                      f"{items[0].amount} in tx {items[0].tx_hash}")
            try:
                self.actors.ask_actor("allocator", m.SetAccountHold(account_id, True, reason))
            except WalletError as exc:
                log.error("could not put an account on hold; retried next step",
                          extra={"account_id": account_id, "error": str(exc)})
                continue
            held.extend(item.deposit_id for item in items)
        book.mark_held(held)
        self.holds_owed = len(held) < len(owed)
        return len(held)

