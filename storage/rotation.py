"""Master key rotation (`wallet keys rotate`): every data key not wrapped under the ring's current master key
is re-wrapped under it; the key ciphertexts stay as they are. Legacy single-layer pool rows (no data key yet)
are converted to envelopes, the one case where a ciphertext is rewritten. The small secrets under the ring
(storage/sealed_secrets.py: staff TOTP secrets, users' TOTP factors, webhook signing secrets: one AES-GCM layer each)
are re-encrypted under the current version, and a webhook secret still in plaintext (a row from before
migration 0033) is sealed and its plaintext cleared.

Online: the running service keeps opening keys under every version its ring holds, and rows are changed by
conditional UPDATEs (`... WHERE key_version = <the version read> AND id IN (...)`), one statement and one
transaction per KEY_ROTATE_CHUNK rows, so the allocator handing out pool keys meanwhile waits at most for one
chunk, and two rotations at once change each row once (the second finds it changed and skips it). A secret's
UPDATE also requires the sealed bytes it read: a secret replaced meanwhile (a user enrolling again, a staff
TOTP reset, by a process still on the old version) is skipped, never overwritten with the old secret.
Idempotent: a second run finds nothing to do. Before any write, every version in use must be in the ring and
open a sample of its keys, or nothing is changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import peewee
from cryptography.exceptions import InvalidTag

from core.errors import ConfigError
from core.keys import KeyRing, SealedKey
from core.limits import KEY_ROTATE_CHUNK
from storage.db import database_proxy
from storage.models import PoolKey, ReserveSecret, WalletKey
from storage.pool import sealed_pool_key
from storage.sealed_secrets import SECRET_COLUMNS, SecretColumn
from storage.walletkeys import sealed_reserve_secret, sealed_wallet_key


@dataclasses.dataclass(frozen=True)
class KeyVersions:
    """What is under which master key version: pool rows (None: legacy single layer), wallet keys, and each kind
    of secret (storage/sealed_secrets.py; None: a webhook secret still in plaintext)."""

    current_version: int
    pool: dict[int | None, int]
    wallet: dict[int, int]
    secrets: dict[str, dict[int | None, int]] = dataclasses.field(default_factory=dict)

    @property
    def pending(self) -> int:
        """Keys and secrets a rotation would change."""
        counts = [self.pool, self.wallet, *self.secrets.values()]
        return sum(n for by_version in counts for version, n in by_version.items() if version != self.current_version)

    def versions_in_use(self) -> set[int]:
        secrets = {v for by_version in self.secrets.values() for v, n in by_version.items() if v is not None and n}
        return {v for v in self.pool if v is not None} | {v for v, n in self.wallet.items() if n} | secrets


@dataclasses.dataclass(frozen=True)
class RotationReport:
    master_version: int
    pool_rewrapped: int  # envelopes whose data key is now under the current version
    pool_converted: int  # legacy rows now envelopes
    wallet_rewrapped: int
    skipped: int  # rows another writer changed between our read and our update (a concurrent rotation)
    secrets: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> secrets re-encrypted (or sealed)

    @property
    def changed(self) -> int:
        return self.pool_rewrapped + self.pool_converted + self.wallet_rewrapped + sum(self.secrets.values())


def key_versions(ring: KeyRing) -> KeyVersions:
    legacy = PoolKey.wrapped_data_key.is_null()
    pool: dict[int | None, int] = {}
    query = (PoolKey.select(PoolKey.key_version, legacy.alias("legacy"), peewee.fn.COUNT(PoolKey.id))
             .group_by(PoolKey.key_version, legacy).tuples())
    for version, is_legacy, count in query:
        key = None if is_legacy else version
        pool[key] = pool.get(key, 0) + count
    wallet = dict(WalletKey.select(WalletKey.master_version, peewee.fn.COUNT(WalletKey.id))
                  .group_by(WalletKey.master_version).tuples())
    for (version,) in ReserveSecret.select(ReserveSecret.master_version).tuples():  # an envelope like them
        wallet[version] = wallet.get(version, 0) + 1
    secrets = {column.kind: _secret_versions(database_proxy, column) for column in SECRET_COLUMNS}
    return KeyVersions(ring.current_version, pool, wallet, secrets)


def _secret_versions(db: peewee.Database, column: SecretColumn) -> dict[int | None, int]:
    c = column
    found: dict[int | None, int] = dict(db.execute_sql(
        f"SELECT {c.version_column}, COUNT(*) FROM {c.table} WHERE {c.sealed_column} IS NOT NULL "
        f"GROUP BY {c.version_column}").fetchall())
    if c.plaintext_column:
        (plaintext,) = db.execute_sql(
            f"SELECT COUNT(*) FROM {c.table} WHERE {c.plaintext_column} IS NOT NULL").fetchone()
        if plaintext:
            found[None] = plaintext
    return found


def require_ring(ring: KeyRing) -> None:
    """For the service's start: every master key version something is under is in the ring (else ConfigError,
    naming the versions), so a key or secret never fails to open halfway through serving."""
    missing = sorted(key_versions(ring).versions_in_use() - set(ring.versions))
    if missing:
        raise ConfigError(f"keys or secrets are under master key versions {missing} that the ring lacks (it holds "
                          f"{list(ring.versions)}): give them in WALLET_MASTER_KEYS_RETIRED until `wallet keys "
                          "rotate` has run")


def rotate_keys(db: peewee.Database, ring: KeyRing, chunk: int = KEY_ROTATE_CHUNK,
                on_progress: Callable[[int], None] | None = None) -> RotationReport:
    """Re-wrap every key not under `ring.current_version` (see the module's docstring). `on_progress(n)` is
    called after each committed chunk with the number of rows it covered."""
    assert 1 <= chunk <= KEY_ROTATE_CHUNK, chunk
    _require_versions(ring)
    progress = on_progress or (lambda n: None)
    counts = {"rewrapped": 0, "converted": 0, "wallet": 0, "skipped": 0}
    current = ring.current_version
    last_id = 0
    while True:
        rows = list(PoolKey.select(PoolKey.id, PoolKey.address, PoolKey.encrypted_key, PoolKey.wrapped_data_key,
                                   PoolKey.key_version)
                    .where((PoolKey.id > last_id)
                           & ((PoolKey.key_version != current) | PoolKey.wrapped_data_key.is_null()))
                    .order_by(PoolKey.id).limit(chunk))
        if not rows:
            break
        last_id = rows[-1].id
        groups: dict[tuple[int, bool], list[tuple[int, SealedKey]]] = {}
        for row in rows:
            old = sealed_pool_key(row)
            groups.setdefault((old.master_version, old.is_legacy), []).append((row.id, ring.to_envelope(old)))
        with db.atomic():
            for (old_version, legacy), group in groups.items():
                changed = _update_pool_rows(db, group, old_version, legacy)
                counts["converted" if legacy else "rewrapped"] += changed
                counts["skipped"] += len(group) - changed
        progress(len(rows))
    wallet_rows = list(WalletKey.select().where(WalletKey.master_version != current))
    reserve_rows = list(ReserveSecret.select().where(ReserveSecret.master_version != current))
    with db.atomic():
        for row in wallet_rows:
            _rotate_wallet_row(ring, row, counts)
        for row in reserve_rows:
            _rotate_reserve_secret(ring, row, counts)
    if wallet_rows or reserve_rows:
        progress(len(wallet_rows) + len(reserve_rows))
    secrets = {column.kind: _rotate_secrets(db, ring, column, chunk, counts, progress) for column in SECRET_COLUMNS}
    return RotationReport(current, counts["rewrapped"], counts["converted"], counts["wallet"], counts["skipped"],
                          secrets)


def _rotate_secrets(db: peewee.Database, ring: KeyRing, column: SecretColumn, chunk: int, counts: dict[str, int],
                    progress: Callable[[int], None]) -> int:
    """Re-encrypt one kind's secrets not under the current version (and seal plaintext ones), a transaction per
    chunk; returns the rows changed."""
    c, p, changed, last_id = column, db.param, 0, -1
    plain = f", {c.plaintext_column}" if c.plaintext_column else ", NULL"
    stale = f"({c.sealed_column} IS NOT NULL AND {c.version_column} <> {p})"
    if c.plaintext_column:
        stale = f"({stale} OR {c.plaintext_column} IS NOT NULL)"
    while True:
        rows = db.execute_sql(
            f"SELECT {c.id_column}, {c.sealed_column}, {c.version_column}{plain}, {', '.join(c.aad_columns)} "
            f"FROM {c.table} WHERE {c.id_column} > {p} AND {stale} ORDER BY {c.id_column} LIMIT {p}",
            [last_id, ring.current_version, chunk]).fetchall()
        if not rows:
            return changed
        last_id = rows[-1][0]
        with db.atomic():
            for row_id, sealed, version, plaintext, *aad_values in rows:
                done = _rotate_secret_row(db, ring, c, row_id, sealed, version, plaintext, tuple(aad_values))
                changed += done
                counts["skipped"] += 1 - done
        progress(len(rows))


def _rotate_secret_row(db: peewee.Database, ring: KeyRing, c: SecretColumn, row_id: int, sealed: bytes | None,
                       version: int | None, plaintext: str | None, aad_values: tuple) -> int:
    p = db.param
    if sealed is None:  # a legacy plaintext webhook secret: sealed, and the plaintext cleared in the same UPDATE
        new, new_version = c.seal(ring, plaintext, aad_values)
        statement = (f"UPDATE {c.table} SET {c.sealed_column} = {p}, {c.version_column} = {p}, "
                     f"{c.plaintext_column} = NULL WHERE {c.id_column} = {p} AND {c.plaintext_column} = {p} "
                     f"AND {c.sealed_column} IS NULL")
        return db.execute_sql(statement, [new, new_version, row_id, plaintext]).rowcount
    new, new_version = c.seal(ring, c.open(ring, sealed, version, aad_values), aad_values)
    statement = (f"UPDATE {c.table} SET {c.sealed_column} = {p}, {c.version_column} = {p} "
                 f"WHERE {c.id_column} = {p} AND {c.version_column} = {p} AND {c.sealed_column} = {p}")
    return db.execute_sql(statement, [new, new_version, row_id, version, bytes(sealed)]).rowcount


def _update_pool_rows(db: peewee.Database, group: list[tuple[int, SealedKey]], old_version: int,
                      legacy: bool) -> int:
    """One UPDATE for rows read under `old_version` (legacy or not); returns the rows it changed. A row another
    writer changed since it was read no longer matches the WHERE and is left alone."""
    p = db.param
    ids = [row_id for row_id, _ in group]
    params: list[object] = []
    wrapped = " ".join(f"WHEN {p} THEN {p}" for _ in group)
    for row_id, new in group:
        params += [row_id, new.wrapped_data_key]
    assignments = [f"wrapped_data_key = CASE id {wrapped} END"]
    if legacy:  # the one case a ciphertext changes: there was no data key to keep
        assignments.append(f"encrypted_key = CASE id {wrapped} END")
        for row_id, new in group:
            params += [row_id, new.ciphertext]
    new_version = group[0][1].master_version
    assert all(new.master_version == new_version for _, new in group)
    layer = "IS NULL" if legacy else "IS NOT NULL"
    statement = (f"UPDATE pool_key SET {', '.join(assignments)}, key_version = {p} "
                 f"WHERE key_version = {p} AND wrapped_data_key {layer} AND id IN ({', '.join([p] * len(ids))})")
    cursor = db.execute_sql(statement, [*params, new_version, old_version, *ids])
    return cursor.rowcount


def _rotate_wallet_row(ring: KeyRing, row: WalletKey, counts: dict[str, int]) -> None:
    old = sealed_wallet_key(row)
    new = ring.rewrap(old)
    assert new.ciphertext == old.ciphertext
    changed = (WalletKey.update(wrapped_data_key=new.wrapped_data_key, master_version=new.master_version)
               .where((WalletKey.id == row.id) & (WalletKey.master_version == old.master_version)).execute())
    _count(counts, "wallet", changed)


def _rotate_reserve_secret(ring: KeyRing, row: ReserveSecret, counts: dict[str, int]) -> None:
    old = sealed_reserve_secret(row)
    new = ring.rewrap(old)
    changed = (ReserveSecret.update(wrapped_data_key=new.wrapped_data_key, master_version=new.master_version)
               .where((ReserveSecret.id == row.id) & (ReserveSecret.master_version == old.master_version)).execute())
    _count(counts, "wallet", changed)


def _count(counts: dict[str, int], kind: str, changed: int) -> None:
    counts[kind if changed else "skipped"] += 1


def _require_versions(ring: KeyRing) -> None:
    """Every version in use is in the ring, and opens a sample of its keys and secrets: a missing or wrong
    retired key stops the rotation before it writes anything."""
    missing = sorted(key_versions(ring).versions_in_use() - set(ring.versions))
    if missing:
        raise ConfigError(f"keys are under master key versions {missing} that the ring lacks (it holds "
                          f"{list(ring.versions)}): give them in WALLET_MASTER_KEYS_RETIRED; nothing was changed")
    for column in SECRET_COLUMNS:
        _open_secret_samples(ring, column)
    for sealed in _samples():
        try:
            ring.open(sealed)
        except InvalidTag:
            raise ConfigError(f"master key version {sealed.master_version} does not open the key of "
                              f"{sealed.address}: the key given for that version is wrong; nothing was "
                              "changed") from None


def _open_secret_samples(ring: KeyRing, column: SecretColumn) -> None:
    """One secret of the kind per version opens."""
    c, db = column, database_proxy
    firsts = db.execute_sql(f"SELECT MIN({c.id_column}) FROM {c.table} WHERE {c.sealed_column} IS NOT NULL "
                            f"GROUP BY {c.version_column}").fetchall()
    for (first,) in firsts:
        sealed, version, *aad_values = db.execute_sql(
            f"SELECT {c.sealed_column}, {c.version_column}, {', '.join(c.aad_columns)} FROM {c.table} "
            f"WHERE {c.id_column} = {db.param}", [first]).fetchone()
        try:
            c.open(ring, sealed, version, tuple(aad_values))
        except InvalidTag:
            raise ConfigError(f"master key version {version} does not open the {c.kind} secret of row {first}: "
                              "the key given for that version is wrong; nothing was changed") from None


def _samples() -> list[SealedKey]:
    """One pool row per (version, layer), every wallet key and the reserves' salt secret."""
    samples = [sealed_wallet_key(row) for row in WalletKey.select()]
    samples += [sealed_reserve_secret(row) for row in ReserveSecret.select()]
    firsts = (PoolKey.select(peewee.fn.MIN(PoolKey.id))
              .group_by(PoolKey.key_version, PoolKey.wrapped_data_key.is_null()).tuples())
    ids = [first for (first,) in firsts]
    if ids:
        samples += [sealed_pool_key(row) for row in PoolKey.select().where(PoolKey.id.in_(ids))]
    return samples
