"""In-memory balances of one shard, changed only through balanced legs, with batch undo.

A leg moves `amount` of `asset` from (debit_account, debit_bucket) to (credit_account, credit_bucket),
so every change sums to zero by construction. User accounts may never go negative; system accounts
(world, fees, transit, escrow) may, and their balances tell where the money came from or went.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from wallet.errors import BalanceOverflow, InsufficientFunds
from wallet.money import AMOUNT_LIMIT

AVAILABLE = "a"
FROZEN = "f"
_BUCKET_INDEX = {AVAILABLE: 0, FROZEN: 1}

BalanceKey = tuple[int, str]  # (account_id, asset)


@dataclasses.dataclass(frozen=True, slots=True)
class Leg:
    asset: str
    debit_account: int
    debit_bucket: str
    credit_account: int
    credit_bucket: str
    amount: int


class Book:
    def __init__(self, system_accounts: Iterable[int] = ()) -> None:
        self.balances: dict[BalanceKey, list[int]] = {}
        self.system_accounts = set(system_accounts)
        self._undo: dict[BalanceKey, tuple[int, int] | None] = {}

    # -- reading ---------------------------------------------------------------------------------
    def balance(self, account_id: int, asset: str) -> tuple[int, int]:
        pair = self.balances.get((account_id, asset))
        return (pair[0], pair[1]) if pair else (0, 0)

    def load(self, account_id: int, asset: str, available: int, frozen: int) -> None:
        self.balances[(account_id, asset)] = [available, frozen]

    # -- changing --------------------------------------------------------------------------------
    def apply(self, legs: Iterable[Leg]) -> None:
        """Apply every leg or none: a failed check raises before anything changes."""
        legs = tuple(legs)
        staged: dict[BalanceKey, list[int]] = {}
        for leg in legs:
            assert leg.amount > 0, "legs carry positive amounts"
            self._stage(staged, leg.debit_account, leg.asset, leg.debit_bucket, -leg.amount)
            self._stage(staged, leg.credit_account, leg.asset, leg.credit_bucket, leg.amount)
        for (account_id, asset), pair in staged.items():
            if account_id not in self.system_accounts and (pair[0] < 0 or pair[1] < 0):
                raise InsufficientFunds(f"insufficient {asset} balance", account_id=account_id, asset=asset)
            if max(pair) >= AMOUNT_LIMIT or min(pair) <= -AMOUNT_LIMIT:
                raise BalanceOverflow(f"{asset} balance would exceed the representable limit")
        for key, pair in staged.items():
            if key not in self._undo:
                current = self.balances.get(key)
                self._undo[key] = (current[0], current[1]) if current else None
            self.balances[key] = pair

    def _stage(self, staged: dict[BalanceKey, list[int]], account_id: int, asset: str, bucket: str,
               delta: int) -> None:
        key = (account_id, asset)
        pair = staged.get(key)
        if pair is None:
            current = self.balances.get(key)
            pair = staged[key] = [current[0], current[1]] if current else [0, 0]
        pair[_BUCKET_INDEX[bucket]] += delta

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
                self.balances[key] = [before[0], before[1]]
        self._undo.clear()
