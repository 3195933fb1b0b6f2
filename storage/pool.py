"""The deposit address pool: keys generated in advance, sealed (core/keys.py envelopes), stored until the
allocator hands one to a new account."""

from __future__ import annotations

import peewee
from tqdm import tqdm

from core.keys import DEPOSIT_PURPOSE, KeyRing, SealedKey, generate_sealed
from core.limits import POOL_INSERT_CHUNK
from storage import sql
from storage.fence import Fence, fenced
from storage.models import PoolKey, now_ms

POOL_COLUMNS = ("address", "encrypted_key", "wrapped_data_key", "key_version", "created_at")


def generate_pool(db: peewee.Database, ring: KeyRing, count: int, progress: bool = False,
                  fence: Fence | None = None) -> int:
    """Generate `count` sealed keys and store them, a transaction per chunk. Returns the count stored.
    `fence`: the allocator's in cluster mode; each chunk's transaction checks it first (FenceLost)."""
    done = 0
    with tqdm(total=count, unit="key", disable=not progress, desc="pool generate") as bar:
        while done < count:
            n = min(POOL_INSERT_CHUNK, count - done)
            now = now_ms()
            rows = [(key.address, key.ciphertext, key.wrapped_data_key, key.master_version, now)
                    for key in generate_sealed(ring, n)]
            with fenced(db, fence):
                sql.insert_many(db, "pool_key", POOL_COLUMNS, rows)
            done += n
            bar.update(n)
    return done


def pool_counts() -> tuple[int, int]:
    """(total, assigned)."""
    total = PoolKey.select().count()
    assigned = PoolKey.select().where(PoolKey.account_id.is_null(False)).count()
    return total, assigned


def sealed_pool_key(row: PoolKey) -> SealedKey:
    """A pool row as a SealedKey (wrapped_data_key None: a legacy single-layer row)."""
    wrapped = None if row.wrapped_data_key is None else bytes(row.wrapped_data_key)
    return SealedKey(row.address, bytes(row.encrypted_key), wrapped, row.key_version, DEPOSIT_PURPOSE)


def load_pool_sealed(address: str) -> SealedKey | None:
    """The sealed key of a deposit address (EIP-55), or None if it is not one of the pool's."""
    row = PoolKey.get_or_none(PoolKey.address == address)
    return None if row is None else sealed_pool_key(row)
