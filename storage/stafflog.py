"""The staff log: a tamper-evident record of every staff action (an approval, a rejection, a pause, a hold
released, ...). Each row carries the SHA-256 of the row before it, so changing, removing or reordering any
row breaks the chain from there on; `wallet audit` verifies it (`verify`).

An action is appended inside the transaction of the change it records (`with db.atomic(): change;
append(...)`), so the log never claims what did not happen and nothing happens unlogged. Appends serialise
on the head row: its UPDATE comes first, which takes the row lock on MariaDB and the write lock on SQLite,
so two appenders never chain to the same parent.

The hashed text is one function (`row_hash`), used where a row is written and where it is verified; a
property test pins its exact form (tests/test_stafflog.py), so a stored hash can never drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator

import peewee

from storage.models import BaseModel, now_ms

GENESIS_HASH = "0" * 64
SYSTEM_ACTOR = "system"  # admin_name of actions the service takes by itself (an automatic approval)
VERIFY_PAGE = 10_000


class StaffAction(BaseModel):
    id = peewee.BigIntegerField(primary_key=True)
    at_ms = peewee.BigIntegerField()
    admin_id = peewee.BigIntegerField(null=True)
    admin_name = peewee.CharField(max_length=64)
    role = peewee.CharField(max_length=16)
    action = peewee.CharField(max_length=48)
    subject = peewee.CharField(max_length=128)
    details = peewee.TextField()
    prev_hash = peewee.CharField(max_length=64)
    row_hash = peewee.CharField(max_length=64)

    class Meta:
        table_name = "staff_action"


class StaffLogHead(BaseModel):
    id = peewee.SmallIntegerField(primary_key=True)
    last_id = peewee.BigIntegerField()
    last_hash = peewee.CharField(max_length=64)

    class Meta:
        table_name = "staff_log_head"


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who acts: a staff member, or the service itself."""

    admin_id: int | None
    name: str
    role: str


SERVICE = Actor(None, SYSTEM_ACTOR, SYSTEM_ACTOR)


def canonical_details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)


def row_hash(row_id: int, at_ms: int, admin_id: int | None, admin_name: str, role: str, action: str,
             subject: str, details: str, prev_hash: str) -> str:
    """SHA-256 of the canonical JSON array of the row's fields in this order, `details` as stored."""
    text = json.dumps([row_id, at_ms, admin_id, admin_name, role, action, subject, details, prev_hash],
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def append(db: peewee.Database, actor: Actor, action: str, subject: str, details: dict[str, Any] | None = None,
           at_ms: int | None = None) -> StaffAction:
    """Append one action; call it inside the transaction of the change it records."""
    assert db.in_transaction(), "a staff action is appended in the transaction of the change it records"
    updated = StaffLogHead.update(last_id=StaffLogHead.last_id + 1).where(StaffLogHead.id == 1).execute()
    assert updated == 1, "the staff log head row is missing (migration 0010)"
    head = StaffLogHead.get_by_id(1)
    stored_details = canonical_details(details or {})
    at = now_ms() if at_ms is None else at_ms
    digest = row_hash(head.last_id, at, actor.admin_id, actor.name, actor.role, action, subject, stored_details,
                      head.last_hash)
    StaffAction.insert(id=head.last_id, at_ms=at, admin_id=actor.admin_id, admin_name=actor.name, role=actor.role,
                       action=action, subject=subject[:128], details=stored_details, prev_hash=head.last_hash,
                       row_hash=digest).execute()
    StaffLogHead.update(last_hash=digest).where(StaffLogHead.id == 1).execute()
    return StaffAction.get_by_id(head.last_id)


def _rows() -> Iterator[StaffAction]:
    last = 0
    while True:
        page = list(StaffAction.select().where(StaffAction.id > last).order_by(StaffAction.id).limit(VERIFY_PAGE))
        yield from page
        if len(page) < VERIFY_PAGE:
            return
        last = page[-1].id


def verify() -> list[str]:
    """Every break of the chain: a gap in the ids, a wrong parent hash, a row whose content does not match
    its hash, or a head that does not name the last row. Empty when the log is intact."""
    problems: list[str] = []
    expected_id, prev = 1, GENESIS_HASH
    for row in _rows():
        if row.id != expected_id:
            problems.append(f"staff log: row {row.id} follows row {expected_id - 1} (rows removed or reordered)")
        if row.prev_hash != prev:
            problems.append(f"staff log: row {row.id} names parent {row.prev_hash[:12]}, not {prev[:12]}")
        digest = row_hash(row.id, row.at_ms, row.admin_id, row.admin_name, row.role, row.action, row.subject,
                          row.details, row.prev_hash)
        if digest != row.row_hash:
            problems.append(f"staff log: row {row.id} ({row.action} {row.subject}) was changed after it was written")
        expected_id, prev = row.id + 1, row.row_hash
    head = StaffLogHead.get_or_none(StaffLogHead.id == 1)
    if head is None:
        problems.append("staff log: the head row is missing")
    elif (head.last_id, head.last_hash) != (expected_id - 1, prev):
        problems.append(f"staff log: the head names row {head.last_id}, the last row is {expected_id - 1} "
                        "(rows removed at the end)")
    return problems


def history(subject: str) -> list[StaffAction]:
    """The actions on one subject (e.g. "withdrawal:12"), oldest first."""
    return list(StaffAction.select().where(StaffAction.subject == subject).order_by(StaffAction.id))
