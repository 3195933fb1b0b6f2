"""Withdrawals' ledger rules, pure: what a shard checks and books when a withdrawal is requested, approved,
rejected, cancelled or settled (DESIGN.md "Withdrawals", rules 1, 3 and 7).

The owning shard is the one writer of every transition that touches money or races with one, so its mailbox
orders a user's cancel against a reviewer's approval: the loser finds the withdrawal no longer `reviewing`
and changes nothing. The shard keeps its open withdrawals (and each account's last 24 h, for the rolling
limit) in a `WithdrawalBook` with batch undo, like the balances' Book.

Postings (base units of the withdrawal's asset unless said):
    request   available → frozen                      amount + fee
    reject    frozen → available                      amount + fee
    cancel    frozen → available                      amount + fee
    confirmed frozen → world (amount), frozen → fees (fee); fees → world: the gas paid, in ETH
    failed    frozen → available (amount + fee);       fees → world: the gas paid, in ETH (flagged)
so `fees` is the net fee income: what users paid minus what the hot wallet burnt.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol

from eth_utils import is_checksum_address, is_hex_address

from core.errors import (
    AccountOnHold, AlreadyApproved, BelowMinimum, DailyLimitExceeded, InvalidAddress, InvalidAmount, OwnAddress,
    UnknownWithdrawal, ValidationError, WithdrawalStateConflict, ZeroAddress,
)
from core.limits import AMOUNT_LIMIT, APPROVALS_FOUR_EYES, DAILY_WINDOW_MS, SHARDS_MAX, WITHDRAWAL_REASON_MAX_LEN
from core.messages import (
    ApproveWithdrawal, CancelWithdrawal, OpResult, RejectWithdrawal, RequestWithdrawal, SettleWithdrawal,
)
from core.money import check_amount
from ledger.book import AVAILABLE, FROZEN, Leg
from ledger.effects import (
    AttemptsSettled, NewApproval, NewWithdrawal, Planned, StaffEntry, WithdrawalTransition,
)

SPEEDS = ("slow", "standard", "fast")
ZERO_ADDRESS = "0x" + "0" * 40
REVIEWING, APPROVED, CONFIRMED, FAILED, REJECTED, CANCELLED = (
    "reviewing", "approved", "confirmed", "failed", "rejected", "cancelled")
IN_SIGNERS_HANDS = ("signed", "broadcast")  # statuses only the signer sets; a settlement starts from one
GAS_ASSET = "ETH"
KINDS_WITHOUT_POSTINGS = frozenset({"w.approve"})  # an approval moves no money (app/audit.py knows)


@dataclasses.dataclass(frozen=True)
class WithdrawalRules:
    """Per asset, base units (from the WALLET_WITHDRAW_* settings)."""

    minimum: dict[str, int]
    daily_limit: dict[str, int]
    auto_approve_below: dict[str, int]
    four_eyes_above: dict[str, int]

    @classmethod
    def from_config(cls, config) -> WithdrawalRules:  # noqa: ANN001 - core.config.Config
        return cls(config.per_asset("withdraw_min"), config.per_asset("withdraw_daily_limit"),
                   config.per_asset("withdraw_auto_approve_below"), config.per_asset("withdraw_four_eyes_above"))

    def approvals_needed(self, asset: str, amount: int) -> int:
        above = self.four_eyes_above.get(asset)
        return APPROVALS_FOUR_EYES if above is not None and amount > above else 1

    def auto_approved(self, asset: str, amount: int) -> bool:
        below = self.auto_approve_below.get(asset)
        return below is not None and amount < below


@dataclasses.dataclass(frozen=True, slots=True)
class OpenWithdrawal:
    """A withdrawal whose money is still frozen on this shard."""

    id: int
    account_id: int
    asset: str
    amount: int
    fee: int
    status: str  # reviewing | approved (the shard does not follow the signer's signed/broadcast)
    approvals: frozenset[int]
    approvals_needed: int


class WithdrawalBook:
    """Open withdrawals by id and each account's requests of the last 24 h, with batch undo."""

    def __init__(self, shard_id: int = 0) -> None:
        self.shard_id = shard_id
        self.last_local = 0  # withdrawal ids of this shard are shard + SHARDS_MAX * n, n = 1, 2, ...
        self._undo_local: int | None = None
        self.open: dict[int, OpenWithdrawal] = {}
        self.recent: dict[int, list[tuple[int, str, int]]] = {}  # account -> [(requested at ms, asset, amount)]
        self._undo_open: dict[int, OpenWithdrawal | None] = {}
        self._undo_recent: dict[int, list[tuple[int, str, int]] | None] = {}  # copies taken on first touch

    def load(self, open_rows: Iterable[OpenWithdrawal], recent_rows: Iterable[tuple[int, int, str, int]],
             highest_id: int = 0) -> None:
        self.last_local = highest_id // SHARDS_MAX
        for row in open_rows:
            self.open[row.id] = row
        for account_id, at_ms, asset, amount in sorted(recent_rows, key=lambda r: r[1]):
            self.recent.setdefault(account_id, []).append((at_ms, asset, amount))

    def get(self, withdrawal_id: int) -> OpenWithdrawal | None:
        return self.open.get(withdrawal_id)

    def allocate_id(self) -> int:
        """The next local id: known when the request is planned, so the batch writes every new row in one
        statement and answers each with its id. Unique across shards (the shard is the id's residue)."""
        if self._undo_local is None:
            self._undo_local = self.last_local
        self.last_local += 1
        return self.last_local * SHARDS_MAX + self.shard_id

    def put(self, withdrawal: OpenWithdrawal) -> None:
        self._undo_open.setdefault(withdrawal.id, self.open.get(withdrawal.id))
        self.open[withdrawal.id] = withdrawal

    def close(self, withdrawal_id: int) -> None:
        self._undo_open.setdefault(withdrawal_id, self.open.get(withdrawal_id))
        self.open.pop(withdrawal_id, None)

    def used_today(self, account_id: int, asset: str, now_ms: int) -> int:
        return sum(amount for at_ms, a, amount in self.recent.get(account_id, ())
                   if a == asset and now_ms - at_ms < DAILY_WINDOW_MS)

    def count_request(self, account_id: int, asset: str, amount: int, now_ms: int) -> None:
        self._touch(account_id).append((now_ms, asset, amount))

    def uncount(self, account_id: int, asset: str, amount: int) -> None:
        """A rejected, cancelled or reverted request moved nothing: it no longer counts against the limit."""
        entries = self._touch(account_id)
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][1:] == (asset, amount):
                del entries[i]
                return

    def _touch(self, account_id: int) -> list[tuple[int, str, int]]:
        entries = self.recent.get(account_id)
        if account_id not in self._undo_recent:
            self._undo_recent[account_id] = list(entries) if entries is not None else None
        return self.recent.setdefault(account_id, [])

    def prune(self, now_ms: int) -> None:
        """Forget requests older than the window (outside batches)."""
        for account_id in list(self.recent):
            kept = [e for e in self.recent[account_id] if now_ms - e[0] < DAILY_WINDOW_MS]
            if kept:
                self.recent[account_id] = kept
            else:
                del self.recent[account_id]

    def commit(self) -> None:
        self._undo_open.clear()
        self._undo_recent.clear()
        self._undo_local = None

    def rollback(self) -> None:
        for withdrawal_id, before in self._undo_open.items():
            if before is None:
                self.open.pop(withdrawal_id, None)
            else:
                self.open[withdrawal_id] = before
        for account_id, before in self._undo_recent.items():
            if before is None:
                self.recent.pop(account_id, None)
            else:
                self.recent[account_id] = before
        if self._undo_local is not None:
            self.last_local = self._undo_local
        self.commit()


class WithdrawalView(Protocol):
    """What the withdrawal planners may know of the shard (ledger.shard.ShardLedger)."""

    shard_id: int
    system: dict[str, int]
    withdrawals: WithdrawalBook
    rules: WithdrawalRules

    def is_known(self, account_id: int) -> bool: ...

    def is_held(self, account_id: int) -> bool: ...

    def is_own_address(self, address: str) -> bool: ...

    def wall_ms(self) -> int: ...


# -- planners, one per command (registered in ledger.planning.Planner) -----------------------------------------


def plan_request(cmd: RequestWithdrawal, view: WithdrawalView) -> Planned:
    now = view.wall_ms()
    _check_request(cmd, view, now)
    rules = view.rules
    approved = rules.auto_approved(cmd.asset, cmd.amount)
    status = APPROVED if approved else REVIEWING
    withdrawal_id = view.withdrawals.allocate_id()
    needed = rules.approvals_needed(cmd.asset, cmd.amount)
    effects: list = [NewWithdrawal(withdrawal_id, cmd.op_id, cmd.account_id, view.shard_id, cmd.asset, cmd.to_address,
                                   cmd.amount, cmd.fee, cmd.speed, status, needed, now)]
    opened = OpenWithdrawal(withdrawal_id, cmd.account_id, cmd.asset, cmd.amount, cmd.fee, status, frozenset(), needed)
    book = view.withdrawals
    if approved:
        effects.append(StaffEntry(None, "system", "system", "withdrawal.auto_approve", f"withdrawal:{withdrawal_id}",
                                  (("amount", str(cmd.amount)), ("asset", cmd.asset),
                                   ("below", str(rules.auto_approve_below[cmd.asset]))), now))
    leg = Leg(cmd.asset, cmd.account_id, AVAILABLE, cmd.account_id, FROZEN, cmd.amount + cmd.fee)
    return Planned(cmd, (leg,), OpResult(cmd.op_id, status, ref=withdrawal_id), effects=tuple(effects),
                   then=(lambda: book.put(opened), lambda: book.count_request(cmd.account_id, cmd.asset, cmd.amount, now)))


def plan_approve(cmd: ApproveWithdrawal, view: WithdrawalView) -> Planned:
    withdrawal = _reviewing(cmd.withdrawal_id, cmd.account_id, view)
    if cmd.admin_id in withdrawal.approvals:
        raise AlreadyApproved("this reviewer approved the withdrawal already; another reviewer must approve it")
    now = view.wall_ms()
    approvals = withdrawal.approvals | {cmd.admin_id}
    done = len(approvals) >= withdrawal.approvals_needed
    status = APPROVED if done else REVIEWING
    book = view.withdrawals
    updated = dataclasses.replace(withdrawal, status=status, approvals=approvals)
    effects: list = [NewApproval(withdrawal.id, cmd.admin_id, cmd.admin_name, now),
                     StaffEntry(cmd.admin_id, cmd.admin_name, "reviewer", "withdrawal.approve",
                                f"withdrawal:{withdrawal.id}", (("approvals", len(approvals)),
                                                                 ("needed", withdrawal.approvals_needed)), now)]
    if done:
        effects.append(WithdrawalTransition(withdrawal.id, (REVIEWING,), APPROVED, now))
    return Planned(cmd, (), OpResult(cmd.op_id, status, ref=withdrawal.id), effects=tuple(effects),
                   then=(lambda: book.put(updated),))


def plan_reject(cmd: RejectWithdrawal, view: WithdrawalView) -> Planned:
    withdrawal = _reviewing(cmd.withdrawal_id, cmd.account_id, view)
    reason = cmd.reason.strip()
    if not reason or len(reason) > WITHDRAWAL_REASON_MAX_LEN:
        raise ValidationError(f"a rejection needs a reason of 1-{WITHDRAWAL_REASON_MAX_LEN} characters")
    now = view.wall_ms()
    effects = (WithdrawalTransition(withdrawal.id, (REVIEWING,), REJECTED, now, reason=reason),
               StaffEntry(cmd.admin_id, cmd.admin_name, "reviewer", "withdrawal.reject", f"withdrawal:{withdrawal.id}",
                          (("reason", reason),), now))
    return _release(cmd, withdrawal, REJECTED, effects, view)


def plan_cancel(cmd: CancelWithdrawal, view: WithdrawalView) -> Planned:
    withdrawal = _reviewing(cmd.withdrawal_id, cmd.account_id, view)
    effects = (WithdrawalTransition(withdrawal.id, (REVIEWING,), CANCELLED, view.wall_ms()),)
    return _release(cmd, withdrawal, CANCELLED, effects, view)


def plan_settle(cmd: SettleWithdrawal, view: WithdrawalView) -> Planned:
    withdrawal = view.withdrawals.get(cmd.withdrawal_id)
    if withdrawal is None or withdrawal.account_id != cmd.account_id:
        raise UnknownWithdrawal(f"withdrawal {cmd.withdrawal_id} is not open on shard {view.shard_id}")
    if withdrawal.status != APPROVED:
        raise WithdrawalStateConflict(f"withdrawal {withdrawal.id} is {withdrawal.status}: nothing was signed")
    if cmd.succeeded not in (0, 1) or not 0 <= cmd.gas_paid < AMOUNT_LIMIT:
        raise InvalidAmount("a settlement needs succeeded 0 or 1 and a non-negative gas amount")
    now = view.wall_ms()
    account, asset, total = withdrawal.account_id, withdrawal.asset, withdrawal.amount + withdrawal.fee
    if cmd.succeeded:
        legs = [Leg(asset, account, FROZEN, view.system["world"], AVAILABLE, withdrawal.amount)]
        if withdrawal.fee:
            legs.append(Leg(asset, account, FROZEN, view.system["fees"], AVAILABLE, withdrawal.fee))
        transition = WithdrawalTransition(withdrawal.id, IN_SIGNERS_HANDS, CONFIRMED, now, tx_hash=cmd.tx_hash,
                                          block_number=cmd.block_number, gas_paid=cmd.gas_paid)
    else:
        legs = [Leg(asset, account, FROZEN, account, AVAILABLE, total)]
        transition = WithdrawalTransition(withdrawal.id, IN_SIGNERS_HANDS, FAILED, now, tx_hash=cmd.tx_hash,
                                          block_number=cmd.block_number, gas_paid=cmd.gas_paid,
                                          operator_reason="the transaction reverted on chain (receipt status 0); "
                                                          "amount + fee returned to the user")
    if cmd.gas_paid:
        legs.append(Leg(GAS_ASSET, view.system["fees"], AVAILABLE, view.system["world"], AVAILABLE, cmd.gas_paid))
    book = view.withdrawals
    then = [lambda: book.close(withdrawal.id)]
    if not cmd.succeeded:
        then.append(lambda: book.uncount(account, asset, withdrawal.amount))
    status = CONFIRMED if cmd.succeeded else FAILED
    return Planned(cmd, tuple(legs), OpResult(cmd.op_id, status, ref=withdrawal.id),
                   effects=(transition, AttemptsSettled(withdrawal.id, cmd.tx_hash)), then=tuple(then))


PLANNERS = {RequestWithdrawal: plan_request, ApproveWithdrawal: plan_approve, RejectWithdrawal: plan_reject,
            CancelWithdrawal: plan_cancel, SettleWithdrawal: plan_settle}


# -- checks ---------------------------------------------------------------------------------------------------


def _check_request(cmd: RequestWithdrawal, view: WithdrawalView, now: int) -> None:
    check_amount(cmd.amount)
    if not isinstance(cmd.fee, int) or isinstance(cmd.fee, bool) or not 0 <= cmd.fee < AMOUNT_LIMIT:
        raise InvalidAmount("fee must be a non-negative integer")
    if cmd.speed not in SPEEDS:
        raise ValidationError(f"speed must be one of {', '.join(SPEEDS)}")
    check_destination(cmd.to_address)
    if view.is_own_address(cmd.to_address):
        raise OwnAddress("that address belongs to this service: send an internal transfer instead")
    if view.is_held(cmd.account_id):
        raise AccountOnHold("the account is on hold for an operator")
    minimum = view.rules.minimum.get(cmd.asset, 1)
    if cmd.amount < minimum:
        raise BelowMinimum(f"the smallest {cmd.asset} withdrawal is {minimum} base units")
    limit = view.rules.daily_limit.get(cmd.asset)
    if limit is not None and view.withdrawals.used_today(cmd.account_id, cmd.asset, now) + cmd.amount > limit:
        raise DailyLimitExceeded(f"this withdrawal would pass the account's {cmd.asset} limit of {limit} base units "
                                 "in 24 hours")


def check_destination(address: object) -> None:
    """An EIP-55 address (the front checksums all-lowercase input), not the zero address."""
    if not isinstance(address, str) or not is_hex_address(address) or not address.startswith("0x"):
        raise InvalidAddress("to_address must be a 0x-prefixed 40-hex-digit Ethereum address")
    if not is_checksum_address(address):
        raise InvalidAddress("to_address must carry a valid EIP-55 checksum")
    if address.lower() == ZERO_ADDRESS:
        raise ZeroAddress("the zero address burns what it receives")


def _reviewing(withdrawal_id: int, account_id: int, view: WithdrawalView) -> OpenWithdrawal:
    withdrawal = view.withdrawals.get(withdrawal_id)
    if withdrawal is None or withdrawal.account_id != account_id:
        raise UnknownWithdrawal(f"no open withdrawal {withdrawal_id} of account {account_id}")
    if withdrawal.status != REVIEWING:
        raise WithdrawalStateConflict(f"withdrawal {withdrawal_id} is {withdrawal.status}, not reviewing")
    return withdrawal


def _release(cmd, withdrawal: OpenWithdrawal, status: str, effects: tuple, view: WithdrawalView) -> Planned:  # noqa: ANN001
    book = view.withdrawals
    leg = Leg(withdrawal.asset, withdrawal.account_id, FROZEN, withdrawal.account_id, AVAILABLE,
              withdrawal.amount + withdrawal.fee)
    return Planned(cmd, (leg,), OpResult(cmd.op_id, status, ref=withdrawal.id), effects=effects,
                   then=(lambda: book.close(withdrawal.id),
                         lambda: book.uncount(withdrawal.account_id, withdrawal.asset, withdrawal.amount)))
