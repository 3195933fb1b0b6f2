"""Allocator (accountsrv): the only writer of accounts and the address pool, and of the binding of an
account to its shard.

An account goes to the live shard with the fewest accounts (not hash-mod), so a newly added shard fills
first. The binding is for life; it is committed, then cached (Directory: memory + Redis), then the
shard and any address listeners (BlockWatch) are told.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pykka

from actors.directory import Directory
from actors.router import Router
from core import messages as m
from core.errors import ValidationError
from core.keys import KeyRing
from ledger.accounts import AllocatorLogic
from storage.db import database_proxy
from storage.models import Account
from storage.pool import generate_pool

log = logging.getLogger(__name__)


class Allocator(pykka.ThreadingActor):
    def __init__(self, router: Router, directory: Directory, shard_count: int, low_watermark: int = 100,
                 key_ring: KeyRing | None = None) -> None:
        super().__init__()
        self.router = router
        self.directory = directory
        self.key_ring = key_ring
        self.logic = AllocatorLogic(shard_count, low_watermark)

    def on_start(self) -> None:
        database_proxy.obj.connect(reuse_if_open=True)
        self.logic.load()
        log.info("allocator started", extra={"pool_remaining": self.logic.remaining})

    def on_stop(self) -> None:
        database_proxy.obj.close()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.Register):
            return self._register(message)
        if isinstance(message, m.PoolStatus):
            return self.logic.status()
        if isinstance(message, m.RefillPool):
            return self._refill(message.count)
        if isinstance(message, m.SetAccountHold):
            return self._set_hold(message)
        if isinstance(message, m.Ping):
            return "pong"
        return super().on_receive(message)

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
        row = Account.get_or_none((Account.id == message.account_id) & (Account.kind == "user"))
        if row is None:
            raise ValidationError(f"no user account {message.account_id}")
        reason = message.reason[:255] if message.on_hold else None
        Account.update(on_hold=message.on_hold, hold_reason=reason).where(Account.id == row.id).execute()
        self.router.ask_shard(row.shard, m.SetHold(row.id, message.on_hold))
        log.warning("account hold changed", extra={"account_id": row.id, "on_hold": message.on_hold,
                                                   "reason": reason})

    def _refill(self, count: int) -> m.PoolStatusReply:
        if self.key_ring is None:
            raise ValidationError("no master key configured; cannot generate keys")
        started = time.monotonic()
        generate_pool(database_proxy.obj, self.key_ring, count)
        self.logic.total += count
        self.logic._check_low()
        log.info("address pool refilled", extra={"count": count, "seconds": round(time.monotonic() - started, 2)})
        return self.logic.status()
