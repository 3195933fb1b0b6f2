"""Operator switches (`operator_switch` rows): the signing pause of withdrawals (DESIGN.md rule 11), and the
treasury's own two, apart from it: sweeps of deposit addresses, and moves of the hot wallet's surplus to cold.

The signer reads the switch inside its signing transaction, with a row lock on MariaDB (`FOR UPDATE`), after
its first write on SQLite (which holds the write lock by then): a pause that has returned is seen by every
signing transaction after it, and one in progress finishes before the pause is answered.
"""

from __future__ import annotations

import peewee

from storage import stafflog
from storage.models import OperatorSwitch, now_ms

SIGNING_PAUSED = "signing_paused"
SWEEPS_PAUSED = "sweeps_paused"
COLD_PAUSED = "cold_paused"
SWITCHES = (SIGNING_PAUSED, SWEEPS_PAUSED, COLD_PAUSED)


def engaged(db: peewee.Database, name: str, lock: bool = False) -> bool:
    query = OperatorSwitch.select(OperatorSwitch.engaged).where(OperatorSwitch.name == name)
    if lock and isinstance(db, peewee.MySQLDatabase):
        query = query.for_update()
    row = query.first()
    return bool(row and row.engaged)


def set_switch(db: peewee.Database, name: str, on: bool, actor: stafflog.Actor, reason: str = "") -> bool:
    """Engage or release a switch and log it, in one transaction. Returns whether anything changed."""
    assert name in SWITCHES, name
    with db.atomic():
        changed = (OperatorSwitch.update(engaged=on, changed_by=actor.name, changed_at=now_ms())
                   .where((OperatorSwitch.name == name) & (OperatorSwitch.engaged != on)).execute())
        if changed:
            stafflog.append(db, actor, f"{name}.{'engage' if on else 'release'}", f"switch:{name}",
                            {"reason": reason} if reason else {})
    return bool(changed)
