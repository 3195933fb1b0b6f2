"""BlockWatch: follows the chain, records deposits, has the owning shards credit them after enough
confirmations, and survives reorgs (blockwatch in the original design).

A thin shell over blockwatch.watcher.BlockWatcher: it keeps time and moves messages. It runs at its own pace with
a self-scheduled tick: one step per Tick, the next Tick told at once while it is behind the head (catching up
or rescanning after a reorg), else after `chain_poll_s` (or after a back-off when the step failed). Exactly one
Tick is outstanding at any time. Between steps the mailbox is served, so address assignments and stats asks
never wait for a whole catch-up.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping


from actors.base import Actor, Handler, TickTimer
from actors.router import Router
from blockwatch.crediting import Crediting
from blockwatch.deposits import PENDING, retry_failed_credit
from blockwatch.watcher import BlockWatcher
from chain.nodes import ChainClient
from chain.errors import ChainError, ChainIdMismatch
from core import messages as m
from core.config import Config
from core.money import AssetRegistry
from storage import stafflog
from storage.db import database_proxy
from storage.fence import Fence
from core.limits import SCAN_RETRY_AFTER_ERROR_S

log = logging.getLogger(__name__)



class BlockWatch(Actor):
    def __init__(self, config: Config, router: Router, assets: AssetRegistry, fence: Fence | None = None,
                 on_fenced: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.fence = fence  # cluster mode: this process's epoch of blockwatch (storage/fence.py)
        self.on_fenced = on_fenced
        self.config = config
        self.router = router
        self.assets = assets
        self.watcher: BlockWatcher | None = None
        self._ticks = TickTimer(self.actor_ref, m.Tick())
        self._addresses_synced = False

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        try:
            self._start_watcher(db)
        except BaseException:
            self.on_stop()  # pykka runs neither on_stop nor on_failure after a failed on_start
            raise

    def _start_watcher(self, db) -> None:  # noqa: ANN001 - the bound peewee database
        client = ChainClient(self.config.rpc_urls, expected_chain_id=self.config.chain_id,
                             batch_size=self.config.scan_batch_blocks, cooldown_s=self.config.chain_node_cooldown_s,
                             health_timeout_s=self.config.chain_health_timeout_s)
        crediting = Crediting(self.router, db, self.config.confirmations)
        self.watcher = BlockWatcher(self.config, client, crediting, self.assets, db, self.fence)
        watched = self.watcher.load_addresses()
        try:
            chain_id = self.watcher.connect()
        except ChainIdMismatch:
            raise  # a node of another chain is configured: refuse to start rather than scan the wrong chain
        except ChainError as exc:
            chain_id = None
            log.warning("no chain node answers yet; retried every tick", extra={"error": str(exc)})
        log.info("blockwatch started", extra={"chain_id": chain_id, "watched_addresses": watched,
                                              "nodes": len(self.config.rpc_urls)})
        self.actor_ref.tell(m.Tick())

    def on_stop(self) -> None:
        self._ticks.cancel()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.Tick: self._tick,
            m.ScanNow: self._scan_now,
            m.AddressAssigned: lambda msg: self.watcher.watch_address(msg.address),
            m.WatchTransactions: lambda msg: self.watcher.watch_transactions(msg.tx_hashes),
            m.GetStats: lambda msg: self.watcher.stats(detailed=msg.detailed),
            m.RetryDepositCredit: self._retry_credit,
            m.Ping: lambda msg: m.Pong("blockwatch"),
        }

    def _retry_credit(self, message: m.RetryDepositCredit) -> m.CreditRetried:
        """Deposits are ours to write, so the console asks us; the staff log row is appended in the transaction
        of the change (blockwatch.deposits.retry_failed_credit)."""
        by = message.by
        row = retry_failed_credit(database_proxy.obj, message.deposit_id, stafflog.Actor(by.admin_id, by.name, by.role),
                                  message.reason)
        self.watcher.crediting.retry_owed = True  # credited on the next step, without waiting for a new block
        return m.CreditRetried(row.id, row.account_id, PENDING)

    def _scan_now(self, message: m.ScanNow) -> m.ScanReport:
        self._sync_addresses()
        return self.watcher.run(message.max_steps)

    def _tick(self, message: m.Tick) -> None:
        """One step; then exactly one next Tick, whatever happened (a lost Tick would stop the scan)."""
        delay_s: float | None = max(self.config.chain_poll_s, SCAN_RETRY_AFTER_ERROR_S)
        try:
            self._sync_addresses()
            report = self.watcher.run(max_steps=1)
            if not report.errors:
                delay_s = None if self.watcher.behind else self.config.chain_poll_s
        finally:
            if delay_s is None:
                self.actor_ref.tell(m.Tick())
            else:
                self._ticks.after(delay_s)

    def _sync_addresses(self) -> None:
        """Addresses assigned between the start-up load and our registration with the router were told to
        nobody; once the router knows us, every later one arrives by message. One catch-up read closes the
        gap."""
        if self._addresses_synced:
            return
        registered = self.router.actor("blockwatch")
        if registered is not None and registered.actor_urn == self.actor_urn:
            self.watcher.load_addresses()
            self._addresses_synced = True


