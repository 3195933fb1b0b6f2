"""What a planned operation does: its legs (ledger/book.py), its first result, and the rows it writes besides
its postings, in the same batch transaction: a cross-shard credit owed, a withdrawal's row and its status
changes, a reviewer's approval, a staff log entry. Planning (pure) names them; persistence writes them.
Every status change is conditional (`WHERE id = ? AND status IN (...)`) and must change exactly one row:
anything else means memory and database disagree, and the batch fails and the shard reloads."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

from core.messages import CrossShardCredit, MoneyCommand, OpResult, ReturnCredit
from ledger.book import Leg

if TYPE_CHECKING:
    from ledger.redpackets import PacketChange


@dataclasses.dataclass(frozen=True, slots=True)
class NewWithdrawal:
    withdrawal_id: int  # the shard's local id (ledger.withdrawals.WithdrawalBook.allocate_id)
    op_id: str
    account_id: int
    shard: int
    asset: str
    to_address: str
    amount: int
    fee: int
    speed: str
    status: str  # reviewing, or approved when below the automatic-approval amount
    approvals_needed: int
    at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class WithdrawalTransition:
    withdrawal_id: int
    from_statuses: tuple[str, ...]
    to_status: str
    at_ms: int
    reason: str | None = None  # a rejection's reason
    tx_hash: str | None = None  # the winning attempt of a settlement
    block_number: int | None = None
    gas_paid: int | None = None
    operator_reason: str | None = None  # set with needs_operator


@dataclasses.dataclass(frozen=True, slots=True)
class NewApproval:
    withdrawal_id: int
    admin_id: int
    admin_name: str
    at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class StaffEntry:
    """An entry of the staff log (storage/stafflog.py)."""

    admin_id: int | None
    admin_name: str
    role: str
    action: str
    subject: str
    details: tuple[tuple[str, object], ...]
    at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptsSettled:
    """The winning attempt is mined; every other attempt of the withdrawal was replaced."""

    withdrawal_id: int
    winner: str


Effect = NewWithdrawal | WithdrawalTransition | NewApproval | StaffEntry | AttemptsSettled


@dataclasses.dataclass(slots=True)
class Planned:
    command: MoneyCommand
    legs: tuple[Leg, ...]
    result: OpResult
    outbox: CrossShardCredit | ReturnCredit | None = None  # owed to another shard, written with this operation
    outbox_target: int | None = None
    kind: str | None = None  # the operation's kind, if not the command's (a refused credit)
    red_packet: PacketChange | None = None  # rows of the shard's red packets, written with the legs
    effects: tuple[Effect, ...] = ()
    # Changes to the shard's memory besides the balances (its open withdrawals), made only once the legs are
    # applied: a command the balances refuse leaves no trace.
    then: tuple[Callable[[], None], ...] = ()
