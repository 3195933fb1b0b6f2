"""The staff operations on withdrawals, shared by the JSON admin API (web/admin_api.py) and the HTML console
(web/console/views_withdrawals.py), so both ask the same actors the same way:

- approve / reject: a command to the owning shard (it writes the approval or rejection with its staff log row);
- pause / resume signing: the operator switch (treasury/switches.py), then a nudge to the signer on resume;
- clear `needs_operator`: the operator has dealt with the cause (treasury/flags.py), then a nudge to the signer.

Each takes the staff member as a stafflog.Actor (id, name, role); role checks are the caller's.
"""

from __future__ import annotations

import secrets

from core import messages as m
from core.errors import UnknownWithdrawal, WithdrawalStateConflict
from storage import stafflog
from storage.db import database_proxy
from storage.models import Withdrawal
from treasury import flags, switches
from web.state import front


def withdrawal(withdrawal_id: int) -> Withdrawal:
    row = Withdrawal.get_or_none(Withdrawal.id == withdrawal_id)
    if row is None:
        raise UnknownWithdrawal(f"no withdrawal {withdrawal_id}")
    return row


def reviewing(withdrawal_id: int) -> Withdrawal:
    row = withdrawal(withdrawal_id)
    if row.status != "reviewing":
        raise WithdrawalStateConflict(f"withdrawal {withdrawal_id} is {row.status}, not reviewing")
    return row


def approve(withdrawal_id: int, by: stafflog.Actor) -> str:
    """The withdrawal's status after this approval ("reviewing" while four eyes wait for a second one)."""
    row = reviewing(withdrawal_id)
    # A fresh op id per request: the same reviewer approving again is refused (already_approved), also when it is
    # a retry of an approval whose answer was lost; it is never counted twice either way.
    op_id = f"a:{row.id}:{by.admin_id}:{secrets.token_hex(8)}"
    result = front().router.command(m.ApproveWithdrawal(op_id=op_id, account_id=row.account_id,
                                                        withdrawal_id=row.id, admin_id=by.admin_id, admin_name=by.name))
    return result.status


def reject(withdrawal_id: int, by: stafflog.Actor, reason: str) -> str:
    row = reviewing(withdrawal_id)
    result = front().router.command(m.RejectWithdrawal(op_id=f"r:{row.id}", account_id=row.account_id,
                                                       withdrawal_id=row.id, admin_id=by.admin_id, admin_name=by.name,
                                                       reason=reason))
    return result.status


def set_signing_paused(paused: bool, by: stafflog.Actor, reason: str = "") -> bool:
    """Whether the switch changed. On resume the signer is told at once to sign what waited."""
    changed = switches.set_switch(database_proxy.obj, switches.SIGNING_PAUSED, paused, by, reason)
    if not paused:
        front().router.tell_actor("signer", m.WithdrawalsApproved(()))
    return changed


def signing_paused() -> bool:
    return switches.engaged(database_proxy.obj, switches.SIGNING_PAUSED)


def clear_operator_flag(withdrawal_id: int, by: stafflog.Actor, reason: str) -> None:
    """Raises WithdrawalStateConflict if the withdrawal is not flagged (nothing changes, nothing is logged)."""
    withdrawal(withdrawal_id)
    if not flags.clear_needs_operator(database_proxy.obj, withdrawal_id, by, reason):
        raise WithdrawalStateConflict(f"withdrawal {withdrawal_id} is not flagged needs_operator")
    front().router.tell_actor("signer", m.WithdrawalsApproved(()))
