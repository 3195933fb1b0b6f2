"""Accounts and their placement, without threads: each shard's system accounts, registration (a pool key
and the live shard with the fewest accounts), pool bookkeeping. The Allocator actor (actors/allocator.py) is
the only caller, so it is the only writer of account rows and the address pool.
"""

from __future__ import annotations

import collections
import logging

import peewee

from core import messages as m
from core.errors import PoolEmpty, UsernameTaken, ValidationError
from core.limits import POOL_PREFETCH
from storage import stafflog
from storage.db import database_proxy
from storage.fence import Fence, fenced
from storage.models import Account, PoolKey, now_ms
from storage.pool import pool_counts

log = logging.getLogger(__name__)

SYSTEM_ACCOUNT_NAMES = ("world", "fees", "transit", "escrow")


def system_username(name: str, shard: int) -> str:
    return f"system:{name}:{shard}"




def ensure_system_accounts(shard_count: int) -> None:
    """Create each shard's system accounts (world, fees, transit, escrow) if missing. Idempotent."""
    existing = {u for (u,) in Account.select(Account.username).where(Account.kind == "system").tuples()}
    rows = [{"username": system_username(name, shard), "kind": "system", "shard": shard, "created_at": now_ms()}
            for shard in range(shard_count) for name in SYSTEM_ACCOUNT_NAMES
            if system_username(name, shard) not in existing]
    if rows:
        Account.insert_many(rows).execute()


class AllocatorLogic:
    """Registration and pool bookkeeping, without threads."""

    def __init__(self, shard_count: int, low_watermark: int, fence: Fence | None = None) -> None:
        self.fence = fence  # cluster mode: every write here first checks this process still owns the allocator
        self.shard_count = shard_count
        self.low_watermark = low_watermark
        self.accounts_per_shard: collections.Counter[int] = collections.Counter()
        self.free_keys: collections.deque[tuple[int, str]] = collections.deque()
        self.total = 0
        self.assigned = 0
        self._warned_low = False

    def load(self) -> None:
        ensure_system_accounts(self.shard_count)
        stray = Account.select().where((Account.kind == "user") & (Account.shard >= self.shard_count)).count()
        if stray:
            raise RuntimeError(f"{stray} accounts are bound to shards >= WALLET_SHARDS={self.shard_count}; "
                               "shards can be added, never removed")
        rows = (Account.select(Account.shard, peewee.fn.COUNT(Account.id)).where(Account.kind == "user")
                .group_by(Account.shard).tuples())
        self.accounts_per_shard = collections.Counter({s: 0 for s in range(self.shard_count)})
        self.accounts_per_shard.update(dict(rows))
        self.total, self.assigned = pool_counts()

    @property
    def remaining(self) -> int:
        return self.total - self.assigned

    def status(self) -> m.PoolStatusReply:
        return m.PoolStatusReply(self.total, self.assigned, self.remaining, self.remaining < self.low_watermark)

    def pick_shard(self) -> int:
        # Fewest accounts first; ties go to the lowest shard number, so the choice is deterministic.
        return min(range(self.shard_count), key=lambda s: (self.accounts_per_shard[s], s))

    def next_key(self) -> tuple[int, str]:
        if not self.free_keys:
            rows = (PoolKey.select(PoolKey.id, PoolKey.address).where(PoolKey.account_id.is_null())
                    .order_by(PoolKey.id).limit(POOL_PREFETCH).tuples())
            self.free_keys.extend(rows)
        if not self.free_keys:
            raise PoolEmpty("the deposit address pool is empty; run `wallet pool generate N`")
        return self.free_keys[0]

    def register(self, request: m.Register) -> m.Registered:
        username = request.username
        if username.startswith("system:"):
            raise ValidationError("usernames may not start with 'system:'")
        if Account.select().where(Account.username == username).exists():
            raise UsernameTaken(f"username {username!r} is taken")
        key_id, address = self.next_key()
        shard = self.pick_shard()
        db = database_proxy.obj
        try:
            with fenced(db, self.fence):
                account_id = Account.insert(
                    username=username, kind="user", shard=shard, password_hash=request.password_hash,
                    pay_password_hash=request.pay_password_hash, deposit_address=address,
                    created_at=now_ms()).execute()
                taken = (PoolKey.update(account_id=account_id, assigned_at=now_ms())
                         .where((PoolKey.id == key_id) & PoolKey.account_id.is_null()).execute())
                if taken != 1:
                    raise peewee.IntegrityError("pool key was taken by someone else")
        except peewee.IntegrityError:
            self.free_keys.clear()  # reload from the database; our view was stale
            if Account.select().where(Account.username == username).exists():
                raise UsernameTaken(f"username {username!r} is taken") from None
            raise
        self.free_keys.popleft()
        self.accounts_per_shard[shard] += 1
        self.assigned += 1
        self._check_low()
        return m.Registered(account_id=account_id, username=username, shard=shard, deposit_address=address)

    def set_hold(self, account_id: int, on_hold: bool, reason: str, by: m.StaffRef | None = None) -> int:
        """Write an account's hold (or its release) on its row; returns the account's shard.

        A staff member's change (`by`) is conditional on the hold being the other way round, and is appended to
        the staff log in the same transaction: the log never claims a release that did not happen, and no
        release happens unlogged."""
        row = Account.get_or_none((Account.id == account_id) & (Account.kind == "user"))
        if row is None:
            raise ValidationError(f"no user account {account_id}")
        kept = reason[:255] if on_hold else None
        db = database_proxy.obj
        with fenced(db, self.fence):
            where = Account.id == row.id
            if by is not None:
                where &= Account.on_hold == (not on_hold)
            changed = Account.update(on_hold=on_hold, hold_reason=kept).where(where).execute()
            if by is not None:
                if changed != 1:
                    raise ValidationError(f"account {account_id} is {'already' if on_hold else 'not'} on hold")
                stafflog.append(db, stafflog.Actor(by.admin_id, by.name, by.role),
                                "account.hold" if on_hold else "account.release_hold", f"account:{row.id}",
                                {"reason": reason, "previous_reason": row.hold_reason})
        log.warning("account hold changed", extra={"account_id": row.id, "on_hold": on_hold, "reason": kept,
                                                   "by": by.name if by is not None else None})
        return row.shard

    def update_credentials(self, account_id: int, password_hash: str | None, pay_password_hash: str | None) -> None:
        """Write a new password hash and/or pay password hash on a user account's row."""
        fields = {}
        if password_hash is not None:
            fields["password_hash"] = password_hash
        if pay_password_hash is not None:
            fields["pay_password_hash"] = pay_password_hash
        if not fields:
            raise ValidationError("nothing to update")
        user = (Account.id == account_id) & (Account.kind == "user")
        if not Account.select().where(user).exists():
            raise ValidationError(f"no user account {account_id}")
        with fenced(database_proxy.obj, self.fence):
            Account.update(**fields).where(user).execute()

    def pool_refilled(self, count: int) -> None:
        self.total += count
        self._check_low()

    def _check_low(self) -> None:
        low = self.remaining < self.low_watermark
        if low and not self._warned_low:
            log.warning("address pool is running low", extra={"remaining": self.remaining})
        self._warned_low = low
