"""TransrvShard: the only writer of its accounts' balances and journal (transrv in the original design).

Group commit: when a money command arrives, the shard drains what else waits in its mailbox (up to a
bound), applies the batch in memory, writes it in one transaction, and only then answers every sender
(actors/base.py runs the drain). A query or event met while draining is handled right after the commit, so
nobody sees uncommitted money. The logic lives in ledger.shard.ShardLedger; this class only moves messages.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from actors.base import Actor, Handler
from actors.router import Router
from core import messages as m
from core.limits import SHARD_BATCH_MAX
from core.money import AssetRegistry
from ledger.shard import BatchOutcome, ShardLedger
from ledger.withdrawals import WithdrawalRules
from storage.db import database_proxy
from storage.fence import Fence

log = logging.getLogger(__name__)


class TransrvShard(Actor):
    batched = (m.Transfer, m.Credit, m.Debit, m.CrossShardCredit, m.ReturnCredit,
               m.RequestWithdrawal, m.ApproveWithdrawal, m.RejectWithdrawal, m.CancelWithdrawal, m.SettleWithdrawal,
               m.CreateRedPacket, m.ClaimRedPacket, m.ExpireRedPacket, m.BookSweepGas)

    def __init__(self, shard_id: int, router: Router, assets: AssetRegistry, batch_max: int = SHARD_BATCH_MAX,
                 rules: WithdrawalRules | None = None, fence: Fence | None = None,
                 on_fenced: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.fence = fence  # cluster mode: this host's epoch of the shard (storage/fence.py)
        self.on_fenced = on_fenced
        self.shard_id = shard_id
        self.router = router
        self.assets = assets
        self.batch_max = batch_max
        self.rules = rules
        self.ledger: ShardLedger | None = None

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        try:
            self.ledger = ShardLedger(self.shard_id, db, self.assets, shard_of=self.router.shard_of, rules=self.rules,
                                      fence=self.fence)
            self.ledger.load()
        except BaseException:
            db.close()  # pykka runs neither on_stop nor on_failure after a failed on_start
            raise
        log.info("shard started", extra={"shard": self.shard_id, "accounts": len(self.ledger.accounts),
                                         "outbox_undelivered": self.ledger.outbox_undelivered})

    def on_stop(self) -> None:
        if self.ledger is not None:
            self.ledger.flush_delivered()
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.GetBalances: self._balances,
            m.OutboxDelivered: self._delivered,
            m.AccountOpened: lambda msg: self.ledger.account_opened(msg.account_id),
            m.SetHold: lambda msg: self.ledger.set_hold(msg.account_id, msg.on_hold),
            m.Tick: self._tick,
            m.Ping: lambda msg: m.Pong(f"shard-{self.shard_id}"),
            m.GetStats: self._stats,
        }

    # -- batches -----------------------------------------------------------------------------------
    def handle_batch(self, messages: Sequence[m.MoneyCommand], asked: Sequence[bool]) -> list[Any]:
        outcome = self.ledger.apply_batch(messages)
        self._send_after_commit(outcome)
        self._let_go_if_fenced()
        return outcome.replies

    def _let_go_if_fenced(self) -> None:
        """Another host took the shard while this one was paused: it committed nothing, and it stops."""
        if self.ledger.fenced_out:
            log.critical("shard fenced out: another host owns it now; letting go", extra={"shard": self.shard_id})
            if self.on_fenced is not None:
                self.on_fenced(self.shard_id)
            self.actor_ref.stop(block=False)

    def absorbed_while_draining(self, message: Any, asked: bool) -> bool:
        # A told OutboxDelivered only marks outbox rows delivered, and those marks are written by this very
        # batch. Every shard acknowledges after each of its batches, so ending the drain there would cut
        # batches to a few commands under cross-shard load.
        if isinstance(message, m.OutboxDelivered) and not asked:
            self.ledger.delivered(message.op_ids)
            return True
        return False

    def _send_after_commit(self, outcome: BatchOutcome) -> None:
        if outcome.approved and self.router.news is not None:
            # blockout_req: the signer takes approved withdrawals from the database; this only wakes it
            self.router.news.publish("blockout_req", {"ids": ",".join(map(str, outcome.approved))})
        tells: list[tuple[int, Any]] = list(outcome.credits_to_send)
        tells.extend((source, m.OutboxDelivered(tuple(op_ids))) for source, op_ids in outcome.acks_to_send.items())
        self.router.tell_shards(tells)  # in cluster mode, one Redis round trip for all of them

    # -- events and queries ------------------------------------------------------------------------
    def _balances(self, message: m.GetBalances) -> m.Balances:
        balances = self.ledger.balances(message.account_id)
        return m.Balances(message.account_id, tuple(m.AssetBalance(asset, available, frozen)
                                                    for asset, (available, frozen) in balances.items()))

    def _delivered(self, message: m.OutboxDelivered) -> None:
        self.ledger.delivered(message.op_ids)

    def _tick(self, message: m.Tick) -> None:
        self.router.tell_shards(self.ledger.due_for_redelivery())
        self.ledger.flush_delivered()
        expired = self.ledger.expire_due()  # red packets past their expiry: the rest back to the sender, once
        if expired is not None:
            self._send_after_commit(expired)
        self._let_go_if_fenced()

    def _stats(self, message: m.GetStats) -> m.ShardStats:
        ledger = self.ledger
        return m.ShardStats(shard=self.shard_id, accounts=len(ledger.accounts), batches=ledger.batches,
                            last_batch_size=ledger.last_batch_size, queue_depth=self.actor_inbox.qsize(),
                            outbox_undelivered=ledger.outbox_undelivered)
