"""TransrvShard: the only writer of its accounts' balances and journal (transrv in the original design).

Group commit: when a money command arrives, the shard drains what else waits in its mailbox (up to a
bound), applies the batch in memory, writes it in one transaction, and only then answers every sender.
Queries and events found while draining are answered after the commit, so nobody sees uncommitted money.
The logic lives in ledger.shard.ShardLedger; this class only moves messages.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pykka

from core import messages as m
from ledger.shard import BatchOutcome, ShardLedger
from storage.db import database_proxy
from core.errors import WalletError
from core.money import AssetRegistry
from actors.router import Router

log = logging.getLogger(__name__)


class TransrvShard(pykka.ThreadingActor):
    def __init__(self, shard_id: int, router: Router, assets: AssetRegistry, batch_max: int = 2000) -> None:
        super().__init__()
        self.shard_id = shard_id
        self.router = router
        self.assets = assets
        self.batch_max = batch_max
        self.ledger: ShardLedger | None = None

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        self.ledger = ShardLedger(self.shard_id, db, self.assets, shard_of=self.router.shard_of)
        self.ledger.load()
        log.info("shard started", extra={"shard": self.shard_id, "accounts": len(self.ledger.accounts),
                                         "outbox_undelivered": len(self.ledger.unacked)})

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # The supervisor restarts the shard from the database; give this thread's connection back first.
        database_proxy.obj.close()

    def on_stop(self) -> None:
        if self.ledger is not None:
            self.ledger.flush_delivered()
        database_proxy.obj.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.MoneyCommand):
            return self._run_batch(message)
        return self._handle(message)

    # -- batches -----------------------------------------------------------------------------------
    def _run_batch(self, first: m.MoneyCommand) -> Any:
        batch: list[tuple[m.MoneyCommand, Any]] = [(first, None)]
        deferred = self._drain(batch)
        outcome = self.ledger.apply_batch([cmd for cmd, _ in batch])
        for (cmd, reply_to), reply in zip(batch[1:], outcome.replies[1:]):
            self._reply(reply_to, cmd, reply)
        self._send_after_commit(outcome)
        for envelope in deferred:
            self._handle_deferred(envelope)
        first_reply = outcome.replies[0]
        if isinstance(first_reply, WalletError):
            if isinstance(first, m.CrossShardCredit):  # told, not asked: raising would stop the actor
                self._log_failed_tell(first, first_reply)
                return None
            raise first_reply
        return first_reply

    def _drain(self, batch: list[tuple[m.MoneyCommand, Any]]) -> list[Any]:
        """Take waiting envelopes into the batch until it is full or a non-money message is met.

        Pykka's inbox has a single consumer (this thread), so `empty()` being false means `get()` will
        not block. A non-money message ends the drain and is handled right after the commit, in order.
        Except a told OutboxDelivered: it only marks outbox rows delivered, and those marks are written by
        this very batch. Every shard acknowledges after each of its batches, so ending the drain there
        would cut batches to a few commands under cross-shard load.
        """
        inbox = self.actor_inbox
        while len(batch) < self.batch_max and not inbox.empty():
            envelope = inbox.get()
            message = envelope.message
            if isinstance(message, m.MoneyCommand):
                batch.append((message, envelope.reply_to))
            elif isinstance(message, m.OutboxDelivered) and envelope.reply_to is None:
                self.ledger.delivered(message.op_ids)
            else:
                return [envelope]
        return []

    def _reply(self, reply_to: Any, cmd: m.MoneyCommand, reply: Any) -> None:
        if reply_to is None:
            if isinstance(reply, WalletError):
                self._log_failed_tell(cmd, reply)
            return
        if isinstance(reply, WalletError):
            reply_to.set_exception(exc_info=(type(reply), reply, None))
        else:
            reply_to.set(reply)

    def _handle_deferred(self, envelope: Any) -> None:
        try:
            # Pykka's own path: its stop and proxy messages, then on_receive (never a money command here).
            result = self._handle_receive(envelope.message)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception(exc_info=sys.exc_info())
            else:
                log.exception("event handler failed", extra={"shard": self.shard_id})
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(result)

    def _send_after_commit(self, outcome: BatchOutcome) -> None:
        for target, credit in outcome.credits_to_send:
            self.router.tell_shard(target, credit)
        for source, op_ids in outcome.acks_to_send.items():
            self.router.tell_shard(source, m.OutboxDelivered(tuple(op_ids)))

    def _log_failed_tell(self, cmd: m.MoneyCommand, error: WalletError) -> None:
        log.error("told money command failed", extra={"shard": self.shard_id, "op_id": cmd.op_id,
                                                      "code": error.code, "detail": error.detail})

    # -- events and queries ------------------------------------------------------------------------
    def _handle(self, message: Any) -> Any:
        ledger = self.ledger
        if isinstance(message, m.GetBalances):
            return ledger.balances(message.account_id)
        if isinstance(message, m.OutboxDelivered):
            ledger.delivered(message.op_ids)
            return None
        if isinstance(message, m.AccountOpened):
            ledger.account_opened(message.account_id)
            return None
        if isinstance(message, m.SetHold):
            ledger.set_hold(message.account_id, message.on_hold)
            return None
        if isinstance(message, m.Tick):
            self._redeliver()
            ledger.flush_delivered()
            return None
        if isinstance(message, m.Ping):
            return "pong"
        if isinstance(message, m.GetStats):
            return {"shard": self.shard_id, "accounts": len(ledger.accounts), "batches": ledger.batches,
                    "last_batch_size": ledger.last_batch_size, "queue_depth": self.actor_inbox.qsize(),
                    "outbox_undelivered": len(ledger.unacked)}
        return super().on_receive(message)

    def _redeliver(self) -> None:
        for target, credit in self.ledger.due_for_redelivery():
            self.router.tell_shard(target, credit)
