"""Allocator (accountsrv): the only writer of accounts and the address pool, and of the binding of an
account to its shard.

An account goes to the live shard with the fewest accounts (not hash-mod), so a newly added shard fills
first. The binding is for life; it is committed, then cached (Directory: memory + Redis), then the
shard and any address listeners (BlockWatch) are told.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from actors.base import Actor, Handler
from actors.directory import Directory
from actors.router import Router
from core import messages as m
from core.errors import ValidationError
from core.keys import KeyRing
from ledger.accounts import AllocatorLogic
from storage.db import database_proxy
from storage.fence import Fence
from storage.pool import generate_pool

log = logging.getLogger(__name__)


class Allocator(Actor):
    def __init__(self, router: Router, directory: Directory, shard_count: int, low_watermark: int = 100,
                 key_ring: KeyRing | None = None, fence: Fence | None = None,
                 on_fenced: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.router = router
        self.directory = directory
        self.key_ring = key_ring
        self.logic = AllocatorLogic(shard_count, low_watermark, fence)
        self.on_fenced = on_fenced

    def on_start(self) -> None:
        db = database_proxy.obj
        db.connect(reuse_if_open=True)
        try:
            self.logic.load()
        except BaseException:
            db.close()  # pykka runs neither on_stop nor on_failure after a failed on_start
            raise
        log.info("allocator started", extra={"pool_remaining": self.logic.remaining})

    def on_stop(self) -> None:
        database_proxy.obj.close()

    def handlers(self) -> Mapping[type, Handler]:
        return {
            m.Register: self._register,
            m.PoolStatus: lambda msg: self.logic.status(),
            m.RefillPool: self._refill,
            m.SetAccountHold: self._set_hold,
            m.UpdateCredentials: lambda msg: self.logic.update_credentials(
                msg.account_id, msg.password_hash, msg.pay_password_hash),
            m.Ping: lambda msg: m.Pong("allocator"),
        }

    def _register(self, message: m.Register) -> m.Registered:
        registered = self.logic.register(message)
        self.directory.remember(registered.account_id, registered.username, registered.shard)
        self.router.tell_shard(registered.shard, m.AccountOpened(registered.account_id))
        # BlockWatch keeps its watch set current by message, not by polling the database.
        self.router.tell_actor("blockwatch", m.AddressAssigned(registered.account_id, registered.deposit_address))
        return registered

    def _set_hold(self, message: m.SetAccountHold) -> None:
        """Write the hold on the account row (the truth, read by a shard when it loads), then have the
        owning shard apply it before answering, so a held account cannot move money once this returns."""
        shard = self.logic.set_hold(message.account_id, message.on_hold, message.reason, message.by)
        self.router.ask_shard(shard, m.SetHold(message.account_id, message.on_hold))

    def _refill(self, message: m.RefillPool) -> m.PoolStatusReply:
        if self.key_ring is None:
            raise ValidationError("no master key configured; cannot generate keys")
        started = time.monotonic()
        generate_pool(database_proxy.obj, self.key_ring, message.count, fence=self.logic.fence)
        self.logic.pool_refilled(message.count)
        log.info("address pool refilled", extra={"count": message.count,
                                                 "seconds": round(time.monotonic() - started, 2)})
        return self.logic.status()
