"""The review queue's reads: a filtered page of withdrawals, oldest first, and what a reviewer wants beside each
row. A fixed number of indexed queries per page, whatever the queue's length:

- the page: WHERE status = ? [AND asset = ?] [AND amount BETWEEN ? AND ?] AND id > :after ORDER BY id LIMIT n+1
  (keyset pagination on (status, asset, id) or (status, id): no OFFSET, so a deep page costs what the first does);
- who approved each already (four eyes), the accounts (name, hold, age), the first withdrawal id to each
  destination ("first withdrawal to this address"), which destinations are ours ("own deposit address?"), and
  each account's activity (withdrawals in all, deposits credited and the last one's time): one query each, over
  the page's ids only.
"""

from __future__ import annotations

import dataclasses
import functools
from decimal import Decimal, InvalidOperation

import peewee
from eth_utils import to_checksum_address

from core.errors import ValidationError, WalletError
from core.limits import SQL_IN_LIST_MAX
from storage.models import Account, Deposit, PoolKey, WalletKey, Withdrawal, WithdrawalApproval
from web.state import front

STATUSES = ("reviewing", "approved", "signed", "broadcast", "confirmed", "failed", "rejected", "cancelled")
CREDITED = "confirmed"


@dataclasses.dataclass(frozen=True)
class Filters:
    status: str = "reviewing"
    asset: str | None = None
    min_units: int | None = None  # base units of `asset`
    max_units: int | None = None
    after: int | None = None
    flagged: bool = False  # needs_operator only

    def args(self, raw: dict[str, str]) -> dict[str, str]:
        """The query string of this filter (the raw amounts as typed), for the next page's link."""
        out = {"status": self.status}
        if self.asset:
            out["asset"] = self.asset
        if self.flagged:
            out["flagged"] = "1"
        for key in ("min", "max"):
            if raw.get(key):
                out[key] = raw[key]
        return out


def parse_filters(args: dict[str, str]) -> Filters:
    """Raises ValidationError (a 400 page) for a status, asset or amount the queue cannot filter by."""
    status = args.get("status") or "reviewing"
    if status not in STATUSES:
        raise ValidationError(f"unknown status {status[:20]!r}: one of {', '.join(STATUSES)}")
    asset = args.get("asset") or None
    decimals = None
    if asset is not None:
        try:
            decimals = front().assets.get(asset).decimals
        except WalletError:
            raise ValidationError(f"unknown asset {asset[:16]!r}") from None
    low, high = args.get("min") or None, args.get("max") or None
    if (low or high) and decimals is None:
        raise ValidationError("choose an asset to filter by amount (amounts are in its whole units)")
    after = args.get("after") or None
    if after is not None and (not after.isdigit() or len(after) > 19):
        raise ValidationError("after is the last id of the previous page")
    return Filters(status, asset, _units(low, decimals, "min"), _units(high, decimals, "max"),
                   int(after) if after else None, args.get("flagged") == "1")


def _units(text: str | None, decimals: int | None, name: str) -> int | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValidationError(f"{name} is an amount such as 1.5") from None
    if not value.is_finite() or value < 0 or len(text) > 40:
        raise ValidationError(f"{name} is an amount such as 1.5")
    units = value.scaleb(decimals)
    if units != units.to_integral_value():
        raise ValidationError(f"{name} has more decimals than the asset ({decimals})")
    return int(units)


def page(filters: Filters, rows_per_page: int) -> tuple[list[Withdrawal], int | None]:
    """The page's rows and the `after` of the next page (None on the last)."""
    query = Withdrawal.select().where(Withdrawal.status == filters.status)
    if filters.asset is not None:
        query = query.where(Withdrawal.asset == filters.asset)
    if filters.min_units is not None:
        query = query.where(Withdrawal.amount >= filters.min_units)
    if filters.max_units is not None:
        query = query.where(Withdrawal.amount <= filters.max_units)
    if filters.flagged:
        query = query.where(Withdrawal.needs_operator == True)  # noqa: E712
    if filters.after is not None:
        query = query.where(Withdrawal.id > filters.after)
    rows = list(query.order_by(Withdrawal.id).limit(rows_per_page + 1))
    more = len(rows) > rows_per_page
    rows = rows[:rows_per_page]
    return rows, rows[-1].id if more else None


@dataclasses.dataclass(frozen=True)
class Activity:
    withdrawals: int  # in all, this one included
    deposits: int  # credited
    last_deposit_at: int | None


@dataclasses.dataclass
class Context:
    """What the queue and the withdrawal page show beside each withdrawal."""

    approvals: dict[int, list[WithdrawalApproval]]
    accounts: dict[int, Account]
    first_to_address: set[int]  # withdrawal ids that are the first ever to their destination
    own_addresses: set[str]  # checksummed destinations that are keys of ours
    activity: dict[int, Activity]


def context(rows: list[Withdrawal]) -> Context:
    ids = [row.id for row in rows]
    account_ids = sorted({row.account_id for row in rows})
    addresses = sorted({row.to_address for row in rows})
    return Context(_approvals(ids), _accounts(account_ids), _firsts(rows, addresses), _own(addresses),
                   _activity(account_ids))


def _approvals(ids: list[int]) -> dict[int, list[WithdrawalApproval]]:
    found: dict[int, list[WithdrawalApproval]] = {}
    if ids:
        for approval in (WithdrawalApproval.select().where(WithdrawalApproval.withdrawal_id.in_(ids))
                         .order_by(WithdrawalApproval.created_at)):
            found.setdefault(approval.withdrawal_id, []).append(approval)
    return found


def _accounts(account_ids: list[int]) -> dict[int, Account]:
    if not account_ids:
        return {}
    return {a.id: a for a in Account.select(Account.id, Account.username, Account.on_hold, Account.created_at,
                                            Account.deposit_address).where(Account.id.in_(account_ids))}


def _firsts(rows: list[Withdrawal], addresses: list[str]) -> set[int]:
    if not addresses:
        return set()
    first = dict(Withdrawal.select(Withdrawal.to_address, peewee.fn.MIN(Withdrawal.id))
                 .where(Withdrawal.to_address.in_(addresses)).group_by(Withdrawal.to_address).tuples())
    return {row.id for row in rows if first.get(row.to_address) == row.id}


def _own(addresses: list[str]) -> set[str]:
    """Destinations that are a deposit key or a wallet key of ours (the shard refuses them at request time;
    a key added since, or a bug there, shows up here)."""
    if not addresses:
        return set()
    assert len(addresses) <= SQL_IN_LIST_MAX  # a page's destinations
    query = (PoolKey.select(PoolKey.address).where(PoolKey.address.in_(addresses))
             + WalletKey.select(WalletKey.address).where(WalletKey.address.in_(addresses)))  # UNION ALL: one trip
    return {checksummed(address) for (address,) in query.tuples()}


def _activity(account_ids: list[int]) -> dict[int, Activity]:
    if not account_ids:
        return {}
    withdrawals = dict(Withdrawal.select(Withdrawal.account_id, peewee.fn.COUNT(Withdrawal.id))
                       .where(Withdrawal.account_id.in_(account_ids)).group_by(Withdrawal.account_id).tuples())
    deposits = {account: (count, last) for account, count, last in
                Deposit.select(Deposit.account_id, peewee.fn.COUNT(Deposit.id), peewee.fn.MAX(Deposit.updated_at))
                .where(Deposit.account_id.in_(account_ids) & (Deposit.status == CREDITED))
                .group_by(Deposit.account_id).tuples()}
    return {a: Activity(withdrawals.get(a, 0), deposits.get(a, (0, None))[0], deposits.get(a, (0, None))[1])
            for a in account_ids}


@functools.lru_cache(maxsize=4096)
def checksummed(address: str) -> str:
    """EIP-55 (a Keccak hash each: cached, the same destinations come back page after page)."""
    try:
        return to_checksum_address(address)
    except ValueError:
        return address


@dataclasses.dataclass(frozen=True)
class Row:
    """One withdrawal as the queue and the withdrawal page show it: everything the template needs, computed
    once here (a Jinja2 include or filter per row costs more than the row's queries)."""

    w: Withdrawal
    account: Account | None
    destination: str
    first_to_address: bool
    own_address: bool
    approvals: list[WithdrawalApproval]
    approved_by_me: bool
    activity: Activity | None


def rows_for(rows: list[Withdrawal], ctx: Context, me_admin_id: int) -> list[Row]:
    out = []
    for row in rows:
        approvals = ctx.approvals.get(row.id, [])
        destination = checksummed(row.to_address)
        out.append(Row(row, ctx.accounts.get(row.account_id), destination, row.id in ctx.first_to_address,
                       destination in ctx.own_addresses, approvals,
                       any(a.admin_id == me_admin_id for a in approvals), ctx.activity.get(row.account_id)))
    return out
