"""In-memory balances of one shard, changed only through balanced legs, with batch undo.

A leg moves `amount` of `asset` from (debit_account, debit_bucket) to (credit_account, credit_bucket),
so every change sums to zero by construction. User accounts may never go negative; system accounts
(world, fees, transit, escrow) may, and their balances tell where the money came from or went.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from core.errors import BalanceOverflow, InsufficientFunds
from core.limits import AMOUNT_LIMIT

AVAILABLE = "a"
FROZEN = "f"
_BUCKET_INDEX = {AVAILABLE: 0, FROZEN: 1}
_NEGATIVE_LIMIT = -AMOUNT_LIMIT  # a constant: negating a 217-bit int allocates a new one each time

BalanceKey = tuple[int, str]  # (account_id, asset)


class Leg(NamedTuple):
    """Immutable; a NamedTuple rather than a frozen dataclass because a shard makes one or more per
    operation and a tuple is several times cheaper to build."""

    asset: str
    debit_account: int
    debit_bucket: str
    credit_account: int
    credit_bucket: str
    amount: int


class Book:
    """Balances are stored as (available, frozen) tuples: immutable, 16 bytes smaller than a list, and
    ignored by the cyclic garbage collector once it has seen them (a shard holds one per account and
    asset, and full collections over 100,000 lists showed up as latency spikes)."""

    def __init__(self, system_accounts: Iterable[int] = ()) -> None:
        self.balances: dict[BalanceKey, tuple[int, int]] = {}
        self.system_accounts = set(system_accounts)
        self._undo: dict[BalanceKey, tuple[int, int] | None] = {}

    # -- reading ---------------------------------------------------------------------------------
    def balance(self, account_id: int, asset: str) -> tuple[int, int]:
        return self.balances.get((account_id, asset), (0, 0))

    def load(self, account_id: int, asset: str, available: int, frozen: int) -> None:
        self.balances[(account_id, asset)] = (available, frozen)

    # -- changing --------------------------------------------------------------------------------
    def apply(self, legs: Iterable[Leg]) -> None:
        """Apply every leg or none: a failed check raises before anything changes.

        Runs once per operation on a shard's hot path, hence written out inline.
        """
        staged: dict[BalanceKey, list[int]] = {}
        for leg in legs:
            amount = leg.amount
            assert amount > 0, "legs carry positive amounts"
            self._stage(staged, (leg.debit_account, leg.asset))[_BUCKET_INDEX[leg.debit_bucket]] -= amount
            self._stage(staged, (leg.credit_account, leg.asset))[_BUCKET_INDEX[leg.credit_bucket]] += amount
        system = self.system_accounts
        for (account_id, asset), (available, frozen) in staged.items():
            if (available < 0 or frozen < 0) and account_id not in system:
                raise InsufficientFunds(f"insufficient {asset} balance", account_id=account_id, asset=asset)
            if not (_NEGATIVE_LIMIT < available < AMOUNT_LIMIT and _NEGATIVE_LIMIT < frozen < AMOUNT_LIMIT):
                raise BalanceOverflow(f"{asset} balance would exceed the representable limit")
        balances, undo = self.balances, self._undo
        for key, (available, frozen) in staged.items():
            if key not in undo:
                undo[key] = balances.get(key)
            balances[key] = (available, frozen)

    def _stage(self, staged: dict[BalanceKey, list[int]], key: BalanceKey) -> list[int]:
        """The staged [available, frozen] of a balance, copied from the book on first touch."""
        pair = staged.get(key)
        if pair is None:
            current = self.balances.get(key)
            pair = staged[key] = list(current) if current else [0, 0]
        return pair

    # -- batches ---------------------------------------------------------------------------------
    def touched(self) -> list[tuple[int, str, int, int]]:
        """(account_id, asset, available, frozen) of every balance changed since the batch began."""
        return [(k[0], k[1], *self.balances[k]) for k in self._undo]

    def commit_batch(self) -> None:
        self._undo.clear()

    def rollback_batch(self) -> None:
        for key, before in self._undo.items():
            if before is None:
                self.balances.pop(key, None)
            else:
                self.balances[key] = before
        self._undo.clear()
