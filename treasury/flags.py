"""`needs_operator` (DESIGN.md rule 8): the signer or BlockWatch flags a withdrawal it must not decide on by
itself (a nonce used by a transaction that is none of ours, a bump over the gas price cap, a settled
transaction reorged out), and from then on neither follows it up. Once an operator has dealt with the cause,
they clear the flag with a reason: the signer follows the withdrawal up again on its next tick (and flags it
again if the cause is still there). The money stays frozen throughout; clearing moves no money and no state.

The conditional UPDATE and its staff log row are one transaction: a flag cleared twice is logged once.
"""

from __future__ import annotations

import peewee

from storage import stafflog
from storage.models import Withdrawal, now_ms

CLEAR_ACTION = "withdrawal.clear_flag"


def clear_needs_operator(db: peewee.Database, withdrawal_id: int, by: stafflog.Actor, reason: str) -> bool:
    """Whether the flag was set (and is now cleared)."""
    with db.atomic():
        row = Withdrawal.get_or_none((Withdrawal.id == withdrawal_id) & (Withdrawal.needs_operator == True))  # noqa: E712
        if row is None:
            return False
        changed = (Withdrawal.update(needs_operator=False, operator_reason=None, updated_at=now_ms())
                   .where((Withdrawal.id == withdrawal_id) & (Withdrawal.needs_operator == True)).execute())  # noqa: E712
        if not changed:
            return False  # cleared meanwhile by another operator
        stafflog.append(db, by, CLEAR_ACTION, f"withdrawal:{withdrawal_id}",
                        {"reason": reason, "flag_reason": row.operator_reason or ""})
    return True
