"""The deposit address pool: keys generated in advance, encrypted, stored until the allocator hands
one to a new account."""

from __future__ import annotations

import peewee
from tqdm import tqdm

from core.limits import POOL_INSERT_CHUNK
from storage import sql
from storage.models import PoolKey, now_ms
from core.keys import KeyRing, generate_encrypted



def generate_pool(db: peewee.Database, ring: KeyRing, count: int, progress: bool = False) -> int:
    """Generate `count` encrypted keys and store them, a transaction per chunk. Returns the count stored."""
    done = 0
    with tqdm(total=count, unit="key", disable=not progress, desc="pool generate") as bar:
        while done < count:
            n = min(POOL_INSERT_CHUNK, count - done)
            now = now_ms()
            rows = []
            for _ in range(n):
                enc = generate_encrypted(ring)
                rows.append((enc.address, enc.ciphertext, enc.key_version, now))
            with db.atomic():
                sql.insert_many(db, "pool_key", ("address", "encrypted_key", "key_version", "created_at"), rows)
            done += n
            bar.update(n)
    return done


def pool_counts() -> tuple[int, int]:
    """(total, assigned)."""
    total = PoolKey.select().count()
    assigned = PoolKey.select().where(PoolKey.account_id.is_null(False)).count()
    return total, assigned
