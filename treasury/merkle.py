"""A Merkle-sum tree over users' balances (proof of reserves), pure: no database, no network.

Every node carries (hash, sum). A leaf commits to an account id, a per-user salt and the balance; an inner
node's hash commits to both children's hashes AND sums, and its sum is theirs added. A verifier who folds a
user's path up to the published root therefore checks the user's balance is counted in the published total,
and, because every sum on the path is refused when negative, no sibling can hide a negative balance that
would cancel the user's own out of the total.

Encodings are fixed width so no two different inputs hash alike (domain byte first: 0 leaf, 1 node,
2 padding):
    leaf = sha256(0x00 || account id (8 bytes, big endian) || salt (32 bytes) || balance (32 bytes))
    node = sha256(0x01 || left hash || left sum (32 bytes) || right hash || right sum (32 bytes))
    pad  = sha256(0x02), sum 0 -- fills an odd level, so a level of n nodes has ceil(n / 2) parents.
Sums and balances are unsigned 256-bit integers; anything outside [0, 2**256) is refused.

The tree is built level by level (lists of bytes and ints: about 2 s per million leaves on one core). A proof
is the list of siblings from the leaf up; the leaf's index says on which side each sibling sits. Sibling
hashes travel as base64url without padding (43 characters) and sums as decimal strings, which keeps a proof
over a million leaves (20 levels) well under 2 KiB.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from typing import Any, Iterable, Sequence

SUM_BYTES = 32
SALT_BYTES = 32
ACCOUNT_ID_BYTES = 8
SUM_LIMIT = 1 << (8 * SUM_BYTES)
LEAF, NODE, PAD = b"\x00", b"\x01", b"\x02"
PAD_HASH = hashlib.sha256(PAD).digest()
PROOF_VERSION = 1
DEPTH_MAX = 64  # 2**64 leaves: a longer path is malformed, not a bigger tree


class ProofError(ValueError):
    """A proof that does not verify, or is malformed. The message says which check failed."""


def _width(value: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SUM_LIMIT:
        raise ProofError(f"{what} must be an integer in [0, 2**256), got {value!r}")
    return value.to_bytes(SUM_BYTES, "big")


def leaf_hash(account_id: int, salt: bytes, balance: int) -> bytes:
    if not 0 <= account_id < 1 << (8 * ACCOUNT_ID_BYTES):
        raise ProofError(f"account id out of range: {account_id!r}")
    if len(salt) != SALT_BYTES:
        raise ProofError(f"salt must be {SALT_BYTES} bytes")
    return hashlib.sha256(LEAF + account_id.to_bytes(ACCOUNT_ID_BYTES, "big") + salt
                          + _width(balance, "balance")).digest()


def node_hash(left: bytes, left_sum: int, right: bytes, right_sum: int) -> bytes:
    return hashlib.sha256(NODE + left + _width(left_sum, "a sum") + right + _width(right_sum, "a sum")).digest()


def derive_salt(secret: bytes, snapshot_id: int, asset: str, account_id: int) -> bytes:
    """A user's salt in one snapshot: HMAC-SHA256 under the server's secret, so salts need no storage, a leaf
    cannot be linked across snapshots, and nobody without the secret can test a guessed balance."""
    return hmac.new(secret, f"reserves/salt/v1:{snapshot_id}:{asset}:{account_id}".encode(), hashlib.sha256).digest()


@dataclasses.dataclass
class MerkleSumTree:
    """levels[0] = leaves ... levels[-1] = [root]; each level a pair of parallel lists (hashes, sums)."""

    hashes: list[list[bytes]]
    sums: list[list[int]]

    @classmethod
    def build(cls, leaves: Iterable[tuple[bytes, int]]) -> MerkleSumTree:
        hashes: list[bytes] = []
        sums: list[int] = []
        for digest, balance in leaves:
            if not 0 <= balance < SUM_LIMIT:
                raise ProofError(f"a leaf's balance is out of range: {balance}")
            hashes.append(digest)
            sums.append(balance)
        if not hashes:
            hashes, sums = [PAD_HASH], [0]
        levels_h, levels_s = [hashes], [sums]
        while len(hashes) > 1:
            hashes, sums = _parents(hashes, sums)
            levels_h.append(hashes)
            levels_s.append(sums)
        if sums[0] >= SUM_LIMIT:
            raise ProofError("the total does not fit 256 bits")
        return cls(levels_h, levels_s)

    @property
    def root(self) -> bytes:
        return self.hashes[-1][0]

    @property
    def total(self) -> int:
        return self.sums[-1][0]

    def path(self, index: int) -> list[tuple[bytes, int]]:
        """The siblings of leaf `index` from the bottom up."""
        if not 0 <= index < len(self.hashes[0]):
            raise IndexError(index)
        siblings = []
        for hashes, sums in zip(self.hashes[:-1], self.sums[:-1]):
            other = index ^ 1
            siblings.append((hashes[other], sums[other]) if other < len(hashes) else (PAD_HASH, 0))
            index >>= 1
        return siblings


def _parents(hashes: Sequence[bytes], sums: Sequence[int]) -> tuple[list[bytes], list[int]]:
    sha, to_bytes = hashlib.sha256, int.to_bytes
    out_h, out_s = [], []
    n = len(hashes)
    for i in range(0, n - 1, 2):
        ls, rs = sums[i], sums[i + 1]
        out_h.append(sha(NODE + hashes[i] + to_bytes(ls, SUM_BYTES, "big") + hashes[i + 1]
                         + to_bytes(rs, SUM_BYTES, "big")).digest())
        out_s.append(ls + rs)
    if n % 2:
        out_h.append(sha(NODE + hashes[-1] + to_bytes(sums[-1], SUM_BYTES, "big") + PAD_HASH
                         + bytes(SUM_BYTES)).digest())
        out_s.append(sums[-1])
    return out_h, out_s


# -- the proof document (what GET /api/v1/me/reserve-proof serves and `wallet verify-proof` reads) ---------


def b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    if not isinstance(text, str) or len(text) != 43:
        raise ProofError("a sibling hash must be 43 characters of base64url")
    try:
        return base64.urlsafe_b64decode(text + "=")
    except (ValueError, TypeError) as exc:
        raise ProofError(f"bad base64url: {text!r}") from exc


def proof_document(tree: MerkleSumTree, index: int, *, account_id: int, salt: bytes, balance: int, asset: str,
                   snapshot_id: int, block_number: int | None) -> dict[str, Any]:
    return {"version": PROOF_VERSION, "asset": asset, "snapshot_id": snapshot_id, "block_number": block_number,
            "root": tree.root.hex(), "total": str(tree.total), "leaf_count": len(tree.hashes[0]),
            "account_id": account_id, "salt": salt.hex(), "balance": str(balance), "index": index,
            "path": [[b64(h), str(s)] for h, s in tree.path(index)]}


@dataclasses.dataclass(frozen=True)
class Verified:
    asset: str
    account_id: int
    balance: int
    root: str
    total: int


def _digits(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.lstrip("-").isdigit() or len(value) > 80:
        raise ProofError(f"{what} must be a string of decimal digits")
    number = int(value)
    if number < 0:
        raise ProofError(f"{what} is negative: a Merkle-sum proof refuses negative sums")
    if number >= SUM_LIMIT:
        raise ProofError(f"{what} does not fit 256 bits")
    return number


def verify_proof(doc: Any, root: str | None = None, total: int | None = None) -> Verified:
    """Fold the path up from the user's leaf; raise ProofError unless it lands exactly on the document's root
    and total (and on `root` / `total` when given: the values published at GET /api/v1/reserves)."""
    if not isinstance(doc, dict) or doc.get("version") != PROOF_VERSION:
        raise ProofError(f"not a version {PROOF_VERSION} proof document")
    try:
        account_id = int(doc["account_id"])
        salt = bytes.fromhex(doc["salt"])
        index = int(doc["index"])
        path = doc["path"]
        claimed_root = bytes.fromhex(doc["root"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"malformed proof document: {exc}") from exc
    balance = _digits(doc.get("balance"), "balance")
    claimed_total = _digits(doc.get("total"), "total")
    if not isinstance(path, list) or len(path) > DEPTH_MAX or index < 0 or index >> len(path):
        raise ProofError("the path does not match the leaf index")
    digest, running = leaf_hash(account_id, salt, balance), balance
    for level, entry in enumerate(path):
        if not isinstance(entry, list) or len(entry) != 2:
            raise ProofError(f"path[{level}] must be [hash, sum]")
        sibling, sibling_sum = unb64(entry[0]), _digits(entry[1], f"path[{level}] sum")
        if (index >> level) & 1:
            digest = node_hash(sibling, sibling_sum, digest, running)
        else:
            digest = node_hash(digest, running, sibling, sibling_sum)
        running += sibling_sum
        if running >= SUM_LIMIT:
            raise ProofError("a sum on the path does not fit 256 bits")
    if digest != claimed_root:
        raise ProofError("the path does not lead to the document's root")
    if running != claimed_total:
        raise ProofError(f"the path sums to {running}, the document claims {claimed_total}")
    if root is not None and root.lower().removeprefix("0x") != claimed_root.hex():
        raise ProofError("the document's root is not the published root")
    if total is not None and total != claimed_total:
        raise ProofError("the document's total is not the published total")
    return Verified(str(doc.get("asset")), account_id, balance, claimed_root.hex(), claimed_total)
