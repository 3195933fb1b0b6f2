"""GET /api/v1/history: the caller's journal, newest first, with cursor pagination.

The journal is read from the database (the shard writes it; the front only reads committed rows). A
posting moves an amount from (debit account, bucket) to (credit account, bucket); from the caller's side
it is one entry per side that is theirs: negative where money left, positive where it arrived. A freeze
moves money between the caller's own buckets, so it shows as two entries.

Entry ids are `2 * posting id + side` (side 1 = the credit side), so ids are unique per account, newer
entries have larger ids, and the cursor is simply the last id served.
"""

from __future__ import annotations

import json

import flask

from core.limits import BOUNCE_OP_PREFIX, CREDIT_OP_PREFIX
from ledger.planning import REFUSED_CREDIT_KIND
from storage.models import Account, Operation, Outbox, Posting
from web.io import paginate, parse_query, respond
from web.schemas import HistoryEntry, HistoryPage, PageQuery
from web.security import rfc3339
from web.state import current_session

bp = flask.Blueprint("history", __name__, url_prefix="/api/v1")

BUCKETS = {"a": "available", "f": "frozen"}


@bp.get("/history")
def history():
    query = parse_query(PageQuery)
    account_id = current_session().account_id
    page, next_cursor = paginate(_entries(account_id, query.before, query.limit + 1), query.limit,
                                 lambda entry: entry[0])
    return respond(HistoryPage(entries=_describe(account_id, page), next_cursor=next_cursor))


def _entries(account_id: int, before: int | None, limit: int) -> list[tuple[int, Posting, bool]]:
    """Up to `limit` (entry id, posting, is credit side) newer-first with entry id < before.

    One indexed query per side (debit_account, credit_account), each newest first, then merged: both
    indexes end in the primary key, so each query reads only the rows it returns. Entry id 2p + side is
    below `before` exactly when p <= (before - 1 - side) // 2, so each side's bound is exact in SQL."""
    rows: list[tuple[int, Posting, bool]] = []
    for column, is_credit in ((Posting.debit_account, False), (Posting.credit_account, True)):
        select = Posting.select().where(column == account_id)
        if before is not None:
            select = select.where(Posting.id <= (before - 1 - int(is_credit)) // 2)
        rows += [(2 * posting.id + int(is_credit), posting, is_credit)
                 for posting in select.order_by(Posting.id.desc()).limit(limit)]
    rows.sort(key=lambda row: row[0], reverse=True)
    return rows[:limit]


def _describe(account_id: int, page: list[tuple[int, Posting, bool]]) -> list[HistoryEntry]:
    op_ids = list({posting.op_id for _, posting, _ in page})
    kinds = dict(Operation.select(Operation.op_id, Operation.kind).where(Operation.op_id.in_(op_ids)).tuples()) \
        if op_ids else {}
    _name_credits_by_source(kinds)
    counterparties = _counterparties(account_id, page)
    statuses = _transfer_statuses([op for op, kind in kinds.items() if kind == "transfer"])
    entries = []
    for entry_id, posting, is_credit in page:
        bucket = posting.credit_bucket if is_credit else posting.debit_bucket
        amount = posting.amount if is_credit else -posting.amount
        entries.append(HistoryEntry(
            id=str(entry_id), op_id=posting.op_id, kind=kinds.get(posting.op_id, "unknown"), asset=posting.asset,
            amount=str(amount), bucket=BUCKETS[bucket], counterparty=counterparties.get((posting.id, is_credit)),
            created_at=rfc3339(posting.created_at), status=statuses.get(posting.op_id) if not is_credit else None))
    return entries


def _transfer_statuses(transfer_ops: list[str]) -> dict[str, str]:
    """completed | in_transit | returned of each transfer: one on this shard is completed; one to another
    shard is completed once its credit applied there, returned once its return applied here (the target
    refused it for good), in transit until then."""
    if not transfer_ops:
        return {}
    credits = dict(Outbox.select(Outbox.source_op_id, Outbox.op_id).where(Outbox.source_op_id.in_(transfer_ops))
                   .tuples())
    returns = {op: BOUNCE_OP_PREFIX + op for op in credits}
    applied = dict(Operation.select(Operation.op_id, Operation.kind).where(
        Operation.op_id.in_(list(credits.values()) + list(returns.values()))).tuples()) if credits else {}
    statuses = {}
    for op in transfer_ops:
        if op not in credits:
            statuses[op] = "completed"
        elif returns[op] in applied:
            statuses[op] = "returned"
        elif applied.get(credits[op], REFUSED_CREDIT_KIND) != REFUSED_CREDIT_KIND:
            statuses[op] = "completed"
        else:
            statuses[op] = "in_transit"
    return statuses


def _name_credits_by_source(kinds: dict[str, str]) -> None:
    """A credit from another shard is named after what sent it: a claimed red packet, rather than "xcredit"."""
    sources = {op_id[len(CREDIT_OP_PREFIX):]: op_id for op_id, kind in kinds.items() if kind == "xcredit"}
    if not sources:
        return
    for source, kind in Operation.select(Operation.op_id, Operation.kind).where(
            Operation.op_id.in_(list(sources)) & (Operation.kind == "red_packet_claim")).tuples():
        kinds[sources[source]] = kind


def _counterparties(account_id: int, page: list[tuple[int, Posting, bool]]) -> dict[tuple[int, bool], str]:
    """Username of the other user of each transfer entry. A same-shard transfer names it in the posting;
    a cross-shard one passes through a system transit account, so the user is read from the outbox row
    that carried it. Deposits, fees and moves between one's own buckets have none."""
    other: dict[tuple[int, bool], int] = {}
    via_outbox: dict[str, list[tuple[int, bool]]] = {}
    for _, posting, is_credit in page:
        other_id = posting.debit_account if is_credit else posting.credit_account
        if other_id != account_id:
            other[(posting.id, is_credit)] = other_id
            via_outbox.setdefault(posting.op_id, []).append((posting.id, is_credit))
    if via_outbox:
        rows = Outbox.select(Outbox.op_id, Outbox.source_op_id, Outbox.payload).where(
            Outbox.op_id.in_(list(via_outbox)) | Outbox.source_op_id.in_(list(via_outbox)))
        for row in rows:
            payload = json.loads(row.payload)
            for key in via_outbox.get(row.source_op_id, []):  # the sender's side: debit into transit
                other[key] = payload["to_account"]
            for key in via_outbox.get(row.op_id, []):  # the recipient's side: credit out of transit
                other[key] = payload["from_account"]
    if not other:
        return {}
    names = dict(Account.select(Account.id, Account.username)
                 .where(Account.id.in_(list(set(other.values()))) & (Account.kind == "user")).tuples())
    return {key: names[account] for key, account in other.items() if account in names}


def recent_entries(account_id: int, limit: int) -> list[HistoryEntry]:
    """The account's newest `limit` journal entries, described as GET /history describes them (the admin
    console's account page)."""
    return _describe(account_id, _entries(account_id, None, limit))
