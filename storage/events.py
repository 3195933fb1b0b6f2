"""The event outbox: what other systems hear about (deposit and withdrawal state changes), as rows written in
the SAME transaction as the state change they report, so an event is never announced for a change that was
rolled back, nor lost for one that was committed.

    with db.atomic():
        ...change a deposit's / withdrawal's status...
        record_event("withdrawal.approved", account_id, {"withdrawal_id": 12, "status": "approved", ...})

The notifier (actors/notifier.py over storage/webhooks.py) reads the rows afterwards: it fans each event out to
every webhook endpoint (signed deliveries, retried, in order per account) and publishes it to the Redis
stream `wallet:events`. Each event has an id of its own (`evt_` + 32 hex), the same in every delivery and
stream entry, so a receiver de-duplicates by it.

The body delivered is `event_body(...)`: {"id", "kind", "account_id", "created_at" (ms), "data"}.
"""

from __future__ import annotations

import dataclasses

import itertools
import json
import os
from typing import Any, Sequence

import peewee

from core.errors import ValidationError
from core.limits import EVENT_KIND_MAX_LEN, EVENT_PAYLOAD_MAX_BYTES
from storage import sql
from storage.db import database_proxy
from storage.models import BaseModel, Withdrawal, now_ms

EVENT_COLUMNS = ("event_id", "kind", "account_id", "payload", "created_at")
DEPOSIT_KINDS = ("deposit.seen", "deposit.confirmed", "deposit.orphaned", "deposit.reorged_after_credit",
                 "deposit.credit_failed")
# "withdrawal.<status>" for each state a user can see; `broadcast` again for each replacement sent (new hash).
WITHDRAWAL_KINDS = tuple(f"withdrawal.{status}" for status in
                         ("reviewing", "approved", "rejected", "cancelled", "broadcast", "confirmed", "failed"))


class Event(BaseModel):
    id = peewee.BigAutoField()  # order of insertion; deliveries are ordered by fan-out (commit) order
    event_id = peewee.CharField(max_length=40, unique=True)
    kind = peewee.CharField(max_length=48)
    account_id = peewee.BigIntegerField(null=True)
    payload = peewee.TextField()  # canonical JSON of the data
    created_at = peewee.BigIntegerField(default=now_ms)
    fanned_at = peewee.BigIntegerField(null=True)  # deliveries created for every endpoint then active
    published_at = peewee.BigIntegerField(null=True)  # added to the Redis stream

    class Meta:
        table_name = "event"


# An event id is this process's random 64-bit nonce and a counter (32 hex digits in all), not 16 fresh random
# bytes each: os.urandom releases the GIL, and a writer recording events inside its transaction (BlockWatch, a
# shard) would queue for the GIL once per event. The column is unique besides.
_NONCE = os.urandom(8).hex()
_counter = itertools.count()


def new_event_id() -> str:
    return f"evt_{_NONCE}{next(_counter):016x}"


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _row(kind: str, account_id: int | None, payload: dict[str, Any], at_ms: int) -> tuple:
    if not isinstance(kind, str) or not 0 < len(kind) <= EVENT_KIND_MAX_LEN:
        raise ValidationError(f"an event kind is 1..{EVENT_KIND_MAX_LEN} characters")
    text = canonical(payload)
    if len(text.encode()) > EVENT_PAYLOAD_MAX_BYTES:
        raise ValidationError(f"an event's payload is at most {EVENT_PAYLOAD_MAX_BYTES} bytes")
    return (new_event_id(), kind, account_id, text, at_ms)


def record_event(kind: str, account_id: int | None, payload: dict[str, Any], at_ms: int | None = None) -> str:
    """Record one event inside the caller's transaction (asserted); returns its event id. `payload` is plain
    JSON values (amounts as strings of digits); `account_id` orders the account's deliveries (None: none)."""
    db = database_proxy.obj
    assert db.in_transaction(), "an event is recorded in the transaction of the change it reports"
    row = _row(kind, account_id, payload, now_ms() if at_ms is None else at_ms)
    sql.insert_many(db, "event", EVENT_COLUMNS, [row])
    return row[0]


def record_events(db: peewee.Database, events: Sequence[tuple[str, int | None, dict[str, Any]]],
                  at_ms: int | None = None) -> list[str]:
    """Several events in one statement, inside the caller's transaction, in this order."""
    if not events:
        return []
    assert db.in_transaction(), "events are recorded in the transaction of the change they report"
    at = now_ms() if at_ms is None else at_ms
    rows = [_row(kind, account_id, payload, at) for kind, account_id, payload in events]
    sql.insert_many(db, "event", EVENT_COLUMNS, rows)
    return [row[0] for row in rows]


def event_body(event_id: str, kind: str, account_id: int | None, created_at: int, payload: str) -> bytes:
    """The bytes delivered (and signed) for an event: the stored payload is embedded as stored."""
    head = json.dumps({"id": event_id, "kind": kind, "account_id": account_id, "created_at": created_at},
                      separators=(",", ":"))
    return (head[:-1] + ',"data":' + payload + "}").encode()


@dataclasses.dataclass(frozen=True, slots=True)
class WithdrawalFacts:
    """What a withdrawal event tells of its withdrawal."""

    account_id: int
    asset: str
    amount: int
    fee: int
    to_address: str
    tx_hash: str | None = None
    reason: str | None = None


def record_withdrawal_events(db: peewee.Database, moves: Sequence[tuple[int, str]], at_ms: int,
                             tx_hashes: dict[int, str] | None = None,
                             written: dict[int, WithdrawalFacts] | None = None) -> list[str]:
    """withdrawal.<status> events for withdrawals just moved ((id, status), in order), in the caller's
    transaction. A row the caller has just written whole and not changed since (`written`: a new withdrawal)
    is taken from there; the others are read back in the transaction, so an event carries what was committed.
    `tx_hashes` names the transaction a `broadcast` event is about (an attempt, before settlement names the
    winner)."""
    if not moves:
        return []
    rows: dict[int, WithdrawalFacts] = dict(written or {})
    unread = {i for i, _ in moves} - rows.keys()
    if unread:
        for row in Withdrawal.select().where(Withdrawal.id.in_(unread)):
            rows[row.id] = WithdrawalFacts(row.account_id, row.asset, row.amount, row.fee, row.to_address,
                                           row.tx_hash, row.reason)
    events = []
    for withdrawal_id, status in moves:
        row = rows[withdrawal_id]
        tx_hash = (tx_hashes or {}).get(withdrawal_id) or row.tx_hash
        events.append((f"withdrawal.{status}", row.account_id, {
            "withdrawal_id": str(withdrawal_id), "status": status, "asset": row.asset, "amount": str(row.amount),
            "fee": str(row.fee), "to_address": row.to_address, "tx_hash": tx_hash, "reason": row.reason}))
    return record_events(db, events, at_ms)
