"""Proof of reserves over the database: snapshots of users' balances as Merkle-sum trees (treasury/merkle.py),
the salts' server secret, and each user's inclusion proof.

A snapshot per asset stores its root, total, height and the balances it was built from (reserve_leaf), so a
user's proof is the same document whenever it is asked, even after balances moved on. Salts are never
stored: each is HMAC(secret, snapshot, asset, account), the secret a random 32 bytes sealed with the key ring
(core/keys.py envelope, purpose "reserves"). A proof carries only its owner's salt.

Built trees are kept in memory for the newest snapshots (a few), so proofs cost a lookup, not a rebuild.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from typing import Any

import peewee

from core.keys import KeyRing
from core.limits import RESERVE_LEAVES_MAX
from storage import sql, walletkeys
from storage.models import Account, ChainCursor, ReserveLeaf, ReserveSecret, ReserveSnapshot, now_ms
from treasury.merkle import MerkleSumTree, derive_salt, leaf_hash, proof_document

SECRET_ADDRESS, SECRET_PURPOSE = walletkeys.RESERVE_SECRET_NAME, walletkeys.RESERVE_SECRET_PURPOSE
TREES_CACHED = 4


class NotInSnapshot(LookupError):
    pass


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    id: int
    asset: str
    block_number: int | None
    root: str
    total: int
    leaf_count: int
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.id, "asset": self.asset, "block_number": self.block_number,
                "root": self.root, "total": str(self.total), "leaf_count": self.leaf_count,
                "created_at": self.created_at}


def salt_secret(db: peewee.Database, ring: KeyRing) -> bytes:
    """The server secret, created on first use (a concurrent creator's row wins: the same secret for all)."""
    row = ReserveSecret.get_or_none(ReserveSecret.id == 1)
    if row is None:
        sealed = ring.seal(SECRET_ADDRESS, os.urandom(32), SECRET_PURPOSE)
        try:
            with db.atomic():
                ReserveSecret.insert(id=1, ciphertext=sealed.ciphertext, wrapped_data_key=sealed.wrapped_data_key,
                                     master_version=sealed.master_version, created_at=now_ms()).execute()
        except peewee.IntegrityError:
            pass
        row = ReserveSecret.get(ReserveSecret.id == 1)
    return ring.open(walletkeys.sealed_reserve_secret(row))


def user_balances(db: peewee.Database, asset: str) -> list[tuple[int, int]]:
    """(account id, available + frozen) of every user holding a balance row of `asset`, by account id."""
    users = {a for (a,) in Account.select(Account.id).where(Account.kind == "user").tuples()}
    rows = db.execute_sql(f"SELECT account_id, available, frozen FROM balance WHERE asset = {db.param}"
                          " ORDER BY account_id", (asset,)).fetchall()
    out = [(account_id, int(available) + int(frozen)) for account_id, available, frozen in rows if account_id in users]
    negative = [a for a, b in out if b < 0]
    if negative:  # `wallet audit` reports it too; a tree with a negative leaf would prove nothing
        raise RuntimeError(f"{len(negative)} users hold a negative {asset} balance (e.g. account {negative[0]})")
    if len(out) > RESERVE_LEAVES_MAX:
        raise RuntimeError(f"{len(out)} balances exceed the tree's bound {RESERVE_LEAVES_MAX}")
    return out


def build_tree(secret: bytes, snapshot_id: int, asset: str, balances: list[tuple[int, int]]) -> MerkleSumTree:
    return MerkleSumTree.build((leaf_hash(a, derive_salt(secret, snapshot_id, asset, a), b), b) for a, b in balances)


class Reserves:
    """Snapshots and proofs. Thread-safe (the front's request threads share one)."""

    def __init__(self, db: peewee.Database, ring: KeyRing) -> None:
        self.db = db
        self.ring = ring
        self._trees: collections.OrderedDict[int, tuple[MerkleSumTree, dict[int, int]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def snapshot(self, asset: str) -> SnapshotInfo:
        """A new snapshot of `asset`, committed with its leaves in one transaction."""
        secret = salt_secret(self.db, self.ring)
        created = now_ms()
        with self.db.atomic():
            cursor = ChainCursor.select(ChainCursor.height).order_by(ChainCursor.chain_id).first()
            height = cursor.height if cursor is not None else None
            balances = user_balances(self.db, asset)
            row = ReserveSnapshot.create(asset=asset, block_number=height, root="0" * 64, total=0,
                                         leaf_count=len(balances), created_at=created)
            tree = build_tree(secret, row.id, asset, balances)
            ReserveSnapshot.update(root=tree.root.hex(), total=tree.total).where(ReserveSnapshot.id == row.id).execute()
            sql.insert_many(self.db, "reserve_leaf", ("snapshot_id", "position", "account_id", "balance"),
                            [(row.id, i, a, str(b)) for i, (a, b) in enumerate(balances)])
        self._remember(row.id, tree, balances)
        return SnapshotInfo(row.id, asset, height, tree.root.hex(), tree.total, len(balances), created)

    def latest(self, asset: str) -> SnapshotInfo | None:
        row = (ReserveSnapshot.select().where(ReserveSnapshot.asset == asset).order_by(ReserveSnapshot.id.desc())
               .first())
        return None if row is None else _info(row)

    def proof(self, asset: str, account_id: int) -> dict[str, Any]:
        """The user's proof document in the newest snapshot of `asset`; NotInSnapshot if none holds them."""
        info = self.latest(asset)
        if info is None:
            raise NotInSnapshot(f"no proof-of-reserves snapshot of {asset} yet")
        tree, positions = self._tree(info)
        index = positions.get(account_id)
        if index is None:
            raise NotInSnapshot(f"the {asset} snapshot {info.id} holds no balance of this account")
        secret = salt_secret(self.db, self.ring)
        return proof_document(tree, index, account_id=account_id, balance=tree.sums[0][index], asset=asset,
                              salt=derive_salt(secret, info.id, asset, account_id), snapshot_id=info.id,
                              block_number=info.block_number)

    def _tree(self, info: SnapshotInfo) -> tuple[MerkleSumTree, dict[int, int]]:
        with self._lock:
            cached = self._trees.get(info.id)
            if cached is not None:
                self._trees.move_to_end(info.id)
                return cached
        rows = (ReserveLeaf.select(ReserveLeaf.account_id, ReserveLeaf.balance)
                .where(ReserveLeaf.snapshot_id == info.id).order_by(ReserveLeaf.position).tuples())
        balances = [(a, int(b)) for a, b in rows]
        tree = build_tree(salt_secret(self.db, self.ring), info.id, info.asset, balances)
        if tree.root.hex() != info.root or tree.total != info.total:  # the pair check: rows changed since
            raise RuntimeError(f"reserve snapshot {info.id}: its leaves no longer give its published root")
        return self._remember(info.id, tree, balances)

    def _remember(self, snapshot_id: int, tree: MerkleSumTree,
                  balances: list[tuple[int, int]]) -> tuple[MerkleSumTree, dict[int, int]]:
        entry = (tree, {a: i for i, (a, _) in enumerate(balances)})
        with self._lock:
            self._trees[snapshot_id] = entry
            while len(self._trees) > TREES_CACHED:
                self._trees.popitem(last=False)
        return entry


def _info(row: ReserveSnapshot) -> SnapshotInfo:
    return SnapshotInfo(row.id, row.asset, row.block_number, row.root, int(row.total), row.leaf_count, row.created_at)
