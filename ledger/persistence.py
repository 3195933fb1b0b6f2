"""A shard's SQL: loading its memory from the database, and writing a whole batch in one transaction.

The write is the group commit: every applied operation (its id, content fingerprint and first result),
its postings, the outbox rows of cross-shard credits, the touched balances and the outbox delivery marks
go in one transaction, as multi-row statements (storage/sql.py); on MySQL a batch of money alone (no
withdrawal, red packet or other effect) is sent as one script, BEGIN to COMMIT in one round trip. A deadlock or
lock-wait timeout rolls the transaction back whole, so the same write is simply tried again, a bounded number
of times.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Iterator, Sequence

import peewee

from core.errors import StateMismatch
from core.limits import SHARD_LOAD_PAGE, SHARD_WRITE_ATTEMPTS
from core.messages import CrossShardCredit, ReturnCredit
from storage.fence import Fence, fenced
from ledger.effects import AttemptsSettled, NewApproval, NewWithdrawal, Planned, StaffEntry, WithdrawalTransition
from ledger.outbox import OutboxEntry
from ledger.redpackets import OPEN, Packet, PacketChange
from ledger.withdrawals import OpenWithdrawal
from storage import sql, stafflog
from storage.events import WithdrawalFacts, record_withdrawal_events
from storage.models import (
    WITHDRAWAL_FINAL, Account, Balance, Outbox, RedPacket, TxAttempt, Withdrawal, WithdrawalApproval, now_ms,
)

log = logging.getLogger(__name__)

_MARK_DELIVERED = "UPDATE outbox SET delivered_at = %s WHERE delivered_at IS NULL AND op_id"
MYSQL_LOCK_CONFLICTS = (1205, 1213)  # lock wait timeout, deadlock: the server rolled the transaction back

OPERATION_COLUMNS = ("op_id", "shard", "kind", "account_id", "fingerprint", "result", "created_at")
POSTING_COLUMNS = ("op_id", "leg", "shard", "asset", "debit_account", "debit_bucket", "credit_account",
                   "credit_bucket", "amount", "created_at")
OUTBOX_COLUMNS = ("op_id", "source_op_id", "source_shard", "target_shard", "payload", "created_at")
WITHDRAWAL_COLUMNS = ("id", "op_id", "account_id", "shard", "asset", "to_address", "amount", "fee", "speed", "status",
                      "approvals_needed", "needs_operator", "created_at", "updated_at")
RED_PACKET_COLUMNS = ("id", "shard", "code", "sender_account", "asset", "total", "shares", "mode", "remaining",
                      "shares_left", "refunded", "status", "created_at", "expires_at", "closed_at", "create_op_id")
CLAIM_COLUMNS = ("red_packet_id", "account_id", "amount", "position", "op_id", "claimed_at")


@dataclasses.dataclass
class LoadedAccounts:
    system: dict[str, int]  # system account name ("world", ...) -> account id
    users: dict[int, bool]  # user account id -> on hold


@dataclasses.dataclass(frozen=True, slots=True)
class BatchWrite:
    """Everything one group commit writes."""

    planned: Sequence[tuple[Planned, str]]  # (plan, content fingerprint)
    balances: Sequence[tuple[int, str, int, int]]  # (account, asset, available, frozen) touched by the batch
    delivered: Sequence[str]  # outbox credits acknowledged by their targets since the last write

    @property
    def empty(self) -> bool:
        return not self.planned and not self.delivered


def is_lock_conflict(exc: peewee.OperationalError) -> bool:
    # peewee wraps the driver's error as (driver_exception, code, message)
    return any(isinstance(arg, int) and arg in MYSQL_LOCK_CONFLICTS for arg in exc.args)


class ShardStore:
    def __init__(self, shard_id: int, db: peewee.Database, fence: Fence | None = None) -> None:
        self.shard_id = shard_id
        self.db = db
        self.fence = fence  # cluster mode: every batch transaction first checks this host still owns the shard

    # -- loading -----------------------------------------------------------------------------------
    def accounts(self) -> LoadedAccounts:
        loaded = LoadedAccounts({}, {})
        for account_id, username, kind, on_hold in self._account_rows():
            if kind == "system":
                loaded.system[username.split(":")[1]] = account_id
            else:
                loaded.users[account_id] = bool(on_hold)
        return loaded

    def _account_rows(self) -> Iterator[tuple]:
        """The shard's accounts in pages (keyset on id): the driver buffers a whole result set, so one
        query for 100,000 accounts would briefly hold them all twice."""
        last_id = 0
        while True:
            page = list(Account.select(Account.id, Account.username, Account.kind, Account.on_hold)
                        .where((Account.shard == self.shard_id) & (Account.id > last_id))
                        .order_by(Account.id).limit(SHARD_LOAD_PAGE).tuples())
            yield from page
            if len(page) < SHARD_LOAD_PAGE:
                return
            last_id = page[-1][0]

    def balances(self, owned: set[int]) -> Iterator[tuple[int, str, int, int]]:
        """Balances of the owned accounts, a range of SHARD_LOAD_PAGE account ids per query."""
        ids = sorted(owned)
        for start in range(0, len(ids), SHARD_LOAD_PAGE):
            low, high = ids[start], ids[min(start + SHARD_LOAD_PAGE, len(ids)) - 1]
            query = (Balance.select(Balance.account_id, Balance.asset, Balance.available, Balance.frozen)
                     .join(Account, on=(Account.id == Balance.account_id))
                     .where((Account.shard == self.shard_id) & Balance.account_id.between(low, high)))
            for row in query.tuples():
                if row[0] in owned:
                    yield row

    def undelivered_outbox(self) -> list[OutboxEntry]:
        rows = Outbox.select().where((Outbox.source_shard == self.shard_id) & Outbox.delivered_at.is_null())
        return [OutboxEntry(credit_of_outbox_row(row), row.target_shard, None, 0) for row in rows]

    def user_account(self, account_id: int) -> bool | None:
        """On hold (True/False) if `account_id` is a user account of this shard, else None."""
        row = Account.get_or_none((Account.id == account_id) & (Account.shard == self.shard_id)
                                  & (Account.kind == "user"))
        return None if row is None else bool(row.on_hold)

    def open_packets(self) -> list[Packet]:
        """The shard's open red packets with their claimants (expired ones not refunded yet included)."""
        rows = list(RedPacket.select().where((RedPacket.shard == self.shard_id) & (RedPacket.status == OPEN)))
        return self._with_claims(rows)

    def packets_by_code(self, codes: Sequence[str]) -> list[Packet]:
        """Packets of this shard with these codes (closed ones a claim names after memory forgot them)."""
        rows = list(RedPacket.select().where((RedPacket.shard == self.shard_id) & RedPacket.code.in_(list(codes))))
        return self._with_claims(rows)

    def _with_claims(self, rows: list[RedPacket]) -> list[Packet]:
        packets = {row.id: _packet_of_row(row) for row in rows}
        if packets:
            for packet_id, account_id in sql.select_in(
                    self.db, "SELECT red_packet_id, account_id FROM red_packet_claim WHERE red_packet_id", list(packets)):
                packets[packet_id].claimed.add(account_id)
        return list(packets.values())

    def known_results(self, op_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """op id -> (fingerprint, result) of those already applied."""
        rows = sql.select_in(self.db, "SELECT op_id, fingerprint, result FROM operation WHERE op_id", op_ids)
        return {op_id: (fingerprint, result) for op_id, fingerprint, result in rows}

    # -- writing -----------------------------------------------------------------------------------
    def write(self, batch: BatchWrite) -> None:
        """One transaction, retried on a lock conflict (the server rolled it back whole)."""
        if batch.empty:
            return
        for attempt in range(1, SHARD_WRITE_ATTEMPTS + 1):
            try:
                self.write_once(batch)
                return
            except peewee.OperationalError as exc:
                if attempt == SHARD_WRITE_ATTEMPTS or not is_lock_conflict(exc):
                    raise
                log.warning("shard batch hit a lock conflict; retrying", extra={"shard": self.shard_id,
                                                                              "attempt": attempt})

    def write_once(self, batch: BatchWrite) -> None:
        now = now_ms()
        if self._money_only(batch) and sql.is_mysql(self.db) and not self.db.in_transaction():
            self._write_money_as_script(batch, now)
            return
        with fenced(self.db, self.fence):  # FenceLost rolls the transaction back: nothing of it is written
            self._write_effects([effect for plan, _ in batch.planned for effect in plan.effects], now)
            self._write_money(batch, now)

    @staticmethod
    def _money_only(batch: BatchWrite) -> bool:
        """Transfers, credits and debits only: what a batch under load nearly always is."""
        return not any(plan.effects or plan.red_packet is not None for plan, _ in batch.planned)

    def _write_money_as_script(self, batch: BatchWrite, now: int) -> None:
        """The same rows as `_write_money`, as one script: one round trip (two with a fence) where the statement
        by statement transaction took six or more."""
        ops, postings, outbox, balances = self._money_rows(batch, now)
        db = self.db
        statements = [*sql.insert_statements(db, "operation", OPERATION_COLUMNS, ops),
                      *sql.insert_statements(db, "posting", POSTING_COLUMNS, postings),
                      *sql.insert_statements(db, "outbox", OUTBOX_COLUMNS, outbox),
                      *sql.upsert_balance_statements(db, balances),
                      *sql.in_statements(db, _MARK_DELIVERED, (now,), list(batch.delivered))]
        guard = None if self.fence is None else self.fence.guard(db)
        if not sql.transaction_script(db, statements, guard=guard):
            self.fence.taken_over()  # raises FenceLost: nothing of the batch was written

    def _write_money(self, batch: BatchWrite, now: int) -> None:
        ops, postings, outbox, balances = self._money_rows(batch, now)
        sql.insert_many(self.db, "operation", OPERATION_COLUMNS, ops)
        sql.insert_many(self.db, "posting", POSTING_COLUMNS, postings)
        sql.insert_many(self.db, "outbox", OUTBOX_COLUMNS, outbox)
        sql.upsert_balances(self.db, balances)
        packet_changes = [plan.red_packet for plan, _ in batch.planned if plan.red_packet is not None]
        if packet_changes:
            self._write_packets(packet_changes, now)
        if batch.delivered:
            sql.execute_in(self.db, _MARK_DELIVERED.replace("%s", self.db.param), (now,), list(batch.delivered))

    def _money_rows(self, batch: BatchWrite, now: int) -> tuple[list, list, list, list]:
        ops, postings, outbox = [], [], []
        for plan, fingerprint in batch.planned:
            cmd = plan.command
            ops.append((cmd.op_id, self.shard_id, plan.kind or cmd.kind, cmd.account_id, fingerprint,
                        plan.result.to_json(), now))
            for n, leg in enumerate(plan.legs):
                postings.append((cmd.op_id, n, self.shard_id, leg.asset, leg.debit_account, leg.debit_bucket,
                                 leg.credit_account, leg.credit_bucket, str(leg.amount), now))
            if plan.outbox is not None:
                outbox.append(_outbox_row(plan.outbox, plan.outbox_target, now))
        balances = [(a, s, str(av), str(fr)) for a, s, av, fr in batch.balances]
        return ops, postings, outbox, balances

    # -- rows besides the money (ledger/effects.py) ------------------------------------------------------
    def _write_effects(self, effects: Sequence, now: int) -> None:
        """In plan order (a new row before its changes); new withdrawals in one multi-row statement."""
        new = [e for e in effects if isinstance(e, NewWithdrawal)]
        sql.insert_many(self.db, "withdrawal", WITHDRAWAL_COLUMNS, [
            (w.withdrawal_id, w.op_id, w.account_id, w.shard, w.asset, w.to_address, str(w.amount), str(w.fee), w.speed,
             w.status, w.approvals_needed, False, w.at_ms, w.at_ms) for w in new])
        moved = [(w.withdrawal_id, w.status) for w in new]  # what the account's webhooks hear, in this transaction
        written = {w.withdrawal_id: WithdrawalFacts(w.account_id, w.asset, w.amount, w.fee, w.to_address) for w in new}
        for effect in effects:
            if isinstance(effect, NewWithdrawal):
                continue
            if isinstance(effect, WithdrawalTransition):
                self._transition(effect)
                moved.append((effect.withdrawal_id, effect.to_status))
                written.pop(effect.withdrawal_id, None)  # changed since: its event reads the row back
            elif isinstance(effect, NewApproval):
                WithdrawalApproval.insert(withdrawal_id=effect.withdrawal_id, admin_id=effect.admin_id,
                                          admin_name=effect.admin_name, created_at=effect.at_ms).execute()
            elif isinstance(effect, StaffEntry):
                stafflog.append(self.db, stafflog.Actor(effect.admin_id, effect.admin_name, effect.role),
                                effect.action, effect.subject, dict(effect.details), at_ms=effect.at_ms)
            elif isinstance(effect, AttemptsSettled):
                (TxAttempt.update(status="replaced")
                 .where((TxAttempt.purpose == "withdrawal") & (TxAttempt.ref_id == effect.withdrawal_id)
                        & (TxAttempt.tx_hash != effect.winner)).execute())
                TxAttempt.update(status="mined").where(TxAttempt.tx_hash == effect.winner).execute()
            else:
                raise TypeError(f"no writer for {type(effect).__name__}")
        if moved:
            record_withdrawal_events(self.db, moved, now, written=written)

    def _transition(self, change: WithdrawalTransition) -> None:
        values: dict = {"status": change.to_status, "updated_at": change.at_ms}
        for name in ("reason", "tx_hash", "block_number", "gas_paid"):
            if getattr(change, name) is not None:
                values[name] = getattr(change, name)
        if change.operator_reason is not None:
            values.update(needs_operator=True, operator_reason=change.operator_reason[:255])
        changed = (Withdrawal.update(**values)
                   .where((Withdrawal.id == change.withdrawal_id) & Withdrawal.status.in_(change.from_statuses))
                   .execute())
        if changed != 1:
            # The shard is the one writer of these transitions: memory and database disagree. The batch fails,
            # rolls back whole, and the shard reloads from the database.
            raise StateMismatch(f"withdrawal {change.withdrawal_id} is not {'/'.join(change.from_statuses)} in "
                                f"the database; the shard reloads")

    def open_withdrawals(self, window_start_ms: int) -> tuple[list[OpenWithdrawal], list[tuple[int, int, str, int]]]:
        """This shard's withdrawals whose money is frozen, and the requests of the last 24 h that count."""
        rows = list(Withdrawal.select(Withdrawal.id, Withdrawal.account_id, Withdrawal.asset, Withdrawal.amount,
                                      Withdrawal.fee, Withdrawal.status, Withdrawal.approvals_needed)
                    .where((Withdrawal.shard == self.shard_id) & Withdrawal.status.not_in(WITHDRAWAL_FINAL)).tuples())
        approvals: dict[int, set[int]] = {}
        if rows:
            for withdrawal_id, admin_id in sql.select_in(
                    self.db, "SELECT withdrawal_id, admin_id FROM withdrawal_approval WHERE withdrawal_id",
                    [r[0] for r in rows if r[5] == "reviewing"]):
                approvals.setdefault(withdrawal_id, set()).add(admin_id)
        open_rows = [OpenWithdrawal(i, a, asset, amount, fee, "reviewing" if status == "reviewing" else "approved",
                                    frozenset(approvals.get(i, ())), needed)
                     for i, a, asset, amount, fee, status, needed in rows]
        recent = list(Withdrawal.select(Withdrawal.account_id, Withdrawal.created_at, Withdrawal.asset,
                                        Withdrawal.amount)
                      .where((Withdrawal.shard == self.shard_id) & (Withdrawal.created_at >= window_start_ms)
                             & Withdrawal.status.not_in(("rejected", "cancelled", "failed"))).tuples())
        return open_rows, recent

    def highest_withdrawal_id(self) -> int:
        return (Withdrawal.select(peewee.fn.MAX(Withdrawal.id)).where(Withdrawal.shard == self.shard_id).scalar()
                or 0)

    def own_addresses(self, addresses: Sequence[str]) -> set[str]:
        """Those of `addresses` (checksummed) that belong to the service: a deposit key or a wallet key."""
        if not addresses:
            return set()
        rows = sql.select_in(self.db, "SELECT address FROM pool_key WHERE address", list(addresses))
        rows += sql.select_in(self.db, "SELECT address FROM wallet_key WHERE address", list(addresses))
        return {address for (address,) in rows}

    def _write_packets(self, changes: Sequence[PacketChange], now: int) -> None:
        """New packets, claims (a claimant claims a packet once: a unique key), and each touched packet's
        counters as they stand after the batch (one UPDATE per packet, whatever the number of claims)."""
        created = [_packet_row(c.created, self.shard_id, now) for c in changes if c.created is not None]
        claims = [(c.packet_id, c.claim[0], str(c.claim[1]), c.claim[3], c.claim[2], now) for c in changes
                  if c.claim is not None]
        last: dict[str, PacketChange] = {}
        for change in changes:
            if change.created is None:
                last[change.packet_id] = change
        sql.insert_many(self.db, "red_packet", RED_PACKET_COLUMNS, created)
        sql.insert_many(self.db, "red_packet_claim", CLAIM_COLUMNS, claims)
        for change in last.values():
            (RedPacket.update(remaining=change.remaining, shares_left=change.shares_left, status=change.status,
                              refunded=change.refunded, closed_at=None if change.status == OPEN else now)
             .where(RedPacket.id == change.packet_id).execute())

    def reconnect(self) -> None:
        """After a failed commit the connection may be dead; give it back so the next batch gets a fresh one."""
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool drops it
            log.debug("closing a failed connection", exc_info=True)
        # No eager reconnect: while the database is down it would raise here; peewee reconnects on next use.


def _outbox_row(credit: CrossShardCredit | ReturnCredit, target: int | None, now: int) -> tuple:
    fields = {"to_account": credit.account_id, "from_account": credit.from_account, "asset": credit.asset,
              "amount": str(credit.amount)}
    if isinstance(credit, ReturnCredit):
        fields.update(kind="return", reason=credit.reason)
    return (credit.op_id, credit.source_op_id, credit.source_shard, target, json.dumps(fields), now)


def _packet_row(packet: Packet, shard: int, now: int) -> tuple:
    return (packet.id, shard, packet.code, packet.sender, packet.asset, str(packet.total), packet.shares, packet.mode,
            str(packet.remaining), packet.shares_left, str(packet.refunded), packet.status, now, packet.expires_at_ms,
            None, packet.create_op_id)


def _packet_of_row(row: RedPacket) -> Packet:
    return Packet(id=row.id, code=row.code, sender=row.sender_account, asset=row.asset, total=int(row.total),
                  shares=row.shares, mode=row.mode, expires_at_ms=row.expires_at, remaining=int(row.remaining),
                  shares_left=row.shares_left, status=row.status, refunded=int(row.refunded),
                  create_op_id=row.create_op_id)


def credit_of_outbox_row(row: Outbox) -> CrossShardCredit | ReturnCredit:
    data = json.loads(row.payload)
    common = dict(op_id=row.op_id, account_id=data["to_account"], source_op_id=row.source_op_id,
                  source_shard=row.source_shard, from_account=data["from_account"], asset=data["asset"],
                  amount=int(data["amount"]))
    if data.get("kind") == "return":
        return ReturnCredit(**common, reason=data["reason"])
    return CrossShardCredit(**common)
