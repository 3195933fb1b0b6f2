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
import threading
from typing import Any

import pykka

from core import messages as m
from chain.nodes import ChainClient
from chain.errors import ChainError, ChainIdMismatch
from blockwatch.watcher import BlockWatcher
from storage.db import database_proxy
from core.config import Config
from core.money import AssetRegistry
from actors.router import Router

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR_S = 1.0  # a failed step (node down, database error) waits at least this long


class BlockWatch(pykka.ThreadingActor):
    def __init__(self, config: Config, router: Router, assets: AssetRegistry) -> None:
        super().__init__()
        self.config = config
        self.router = router
        self.assets = assets
        self.watcher: BlockWatcher | None = None
        self._timer: threading.Timer | None = None
        self._addresses_synced = False

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        client = ChainClient(self.config.rpc_urls, expected_chain_id=self.config.chain_id,
                             batch_size=self.config.scan_batch_blocks, cooldown_s=self.config.chain_node_cooldown_s,
                             health_timeout_s=self.config.chain_health_timeout_s)
        self.watcher = BlockWatcher(self.config, client, self.router, self.assets, db)
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
        if self._timer is not None:
            self._timer.cancel()
        if self.watcher is not None:
            self.watcher.close()
        database_proxy.obj.close()

    def on_failure(self, *exc_info: Any) -> None:
        self.on_stop()  # the supervisor starts a new BlockWatch from the database; release this one's threads

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.Tick):
            self._tick()
            return None
        if isinstance(message, m.ScanNow):
            self._sync_addresses()
            return self.watcher.run(message.max_steps)
        if isinstance(message, m.AddressAssigned):
            self.watcher.watch_address(message.address)
            return None
        if isinstance(message, m.GetStats):
            return self.watcher.stats(detailed=message.detailed)
        if isinstance(message, m.Ping):
            return "pong"
        return super().on_receive(message)

    def _tick(self) -> None:
        try:
            self._sync_addresses()
        except Exception:  # noqa: BLE001 - a told handler must not raise (it would stop the actor); retried
            log.exception("could not read the addresses assigned during start-up; retried next tick")
        report = self.watcher.run(max_steps=1)
        if report.errors:
            self._schedule(max(self.config.chain_poll_s, RETRY_AFTER_ERROR_S))
        elif self.watcher.behind:
            self.actor_ref.tell(m.Tick())
        else:
            self._schedule(self.config.chain_poll_s)

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

    def _schedule(self, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self._wake)
        timer.daemon = True
        timer.start()
        self._timer = timer

    def _wake(self) -> None:
        try:
            self.actor_ref.tell(m.Tick())
        except pykka.ActorDeadError:
            pass  # stopped meanwhile
