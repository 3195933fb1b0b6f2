"""Where an account lives: account id -> shard and username -> (account id, shard).

A binding never changes (an account is bound to one shard for life), so every layer may cache it
forever: process memory, then Redis (shared by every front process), then the database (the truth).
"""

from __future__ import annotations

import logging
import threading

import redis

from storage.models import Account
from core.errors import UnknownAccount

log = logging.getLogger(__name__)


class Directory:
    def __init__(self, redis_client: redis.Redis | None = None, prefix: str = "wallet") -> None:
        self._redis = redis_client
        self._shard_key = f"{prefix}:account_shard"
        self._user_key = f"{prefix}:username"
        self._by_id: dict[int, int] = {}
        self._by_name: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def remember(self, account_id: int, username: str, shard: int) -> None:
        """Called by the allocator after the account row is committed (and on a database read)."""
        self._cache(account_id, username, shard)
        if self._redis is not None:
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hset(self._shard_key, str(account_id), str(shard))
                pipe.hset(self._user_key, username, f"{account_id}:{shard}")
                pipe.execute()
            except redis.RedisError:
                log.warning("redis unavailable; binding cached in memory only", exc_info=True)

    def shard_of(self, account_id: int) -> int:
        shard = self._by_id.get(account_id)
        if shard is not None:
            return shard
        shard = self._from_redis_id(account_id)
        if shard is not None:
            self._cache(account_id, None, shard)
            return shard
        row = Account.get_or_none((Account.id == account_id) & (Account.kind == "user"))
        if row is None:
            raise UnknownAccount(f"no account {account_id}")
        self.remember(row.id, row.username, row.shard)
        return row.shard

    def lookup(self, username: str) -> tuple[int, int]:
        """(account id, shard) of a user account by name."""
        hit = self._by_name.get(username)
        if hit is not None:
            return hit
        hit = self._from_redis_name(username)
        if hit is not None:
            self._cache(hit[0], username, hit[1])
            return hit
        row = Account.get_or_none((Account.username == username) & (Account.kind == "user"))
        if row is None:
            raise UnknownAccount(f"no account named {username!r}")
        self.remember(row.id, row.username, row.shard)
        return row.id, row.shard

    def _cache(self, account_id: int, username: str | None, shard: int) -> None:
        """Process memory, both ways when the name is known: a name looked up is usually routed by id next."""
        with self._lock:
            self._by_id[account_id] = shard
            if username is not None:
                self._by_name[username] = (account_id, shard)

    def _from_redis_id(self, account_id: int) -> int | None:
        if self._redis is None:
            return None
        try:
            raw = self._redis.hget(self._shard_key, str(account_id))
        except redis.RedisError:
            return None
        return int(raw) if raw is not None else None

    def _from_redis_name(self, username: str) -> tuple[int, int] | None:
        if self._redis is None:
            return None
        try:
            raw = self._redis.hget(self._user_key, username)
        except redis.RedisError:
            return None
        if raw is None:
            return None
        account_id, shard = (int(x) for x in raw.decode().split(":"))
        return account_id, shard
