"""`wallet audit`: check every ledger invariant of DESIGN.md against the database (the source of truth).

1. every posting is well formed (positive amount, known accounts, known buckets) and the stored
   balances of all accounts sum to zero per asset (double entry);
2. every stored balance (available and frozen) equals the sum of its journal postings;
3. no user account has a negative balance;
4. no operation is applied twice (unique ids in the database) and every operation has its postings,
   every posting its operation;
5. money in transit between shards equals the cross-shard credits not yet applied: nothing is lost
   or created on the way; a delivered outbox row has its credit applied (or refused for good, and then
   its return is owed); no credit waits in transit longer than TRANSIT_AGE_MAX_MS (a refused credit
   comes back to its sender, so money left there is stuck, for an operator);
6. every confirmed deposit has its credit operation, and every deposit credit operation (`d:` op id)
   belongs to a deposit that is confirmed or reorged_after_credit (credited, then flagged);
7. the staff log's hash chain is intact (storage/stafflog.py);
8. withdrawals: frozen money equals the open withdrawals' amount + fee, per account and asset; a confirmed
   withdrawal has exactly one winning hash; no two withdrawals share a lane's nonce.
9. red packets: each shard's escrow holds exactly what its open packets have left, per asset; every packet's
   total is its claims + its refund + what is left, its claims number shares − shares left, its status
   agrees with its counters (claimed_out: nothing left; expired: refunded by its one "e:" operation; open:
   something left), and its creation, every claim and any refund are applied operations.
10. treasury moves (treasury/sweeps.py): the gas of every final sweep or cold move is booked once, by its
   "sw:" operation, for exactly its gas; no "sw:" operation without its final move; no two moves share a
   sending address's nonce.

Amounts are summed as Python ints (SQLite would sum TEXT as floats).
"""

from __future__ import annotations

import collections
import dataclasses
import json

import peewee

from core.limits import TRANSIT_AGE_MAX_MS
from ledger.book import AVAILABLE, FROZEN
from ledger.planning import REFUSED_CREDIT_KIND
from ledger.withdrawals import KINDS_WITHOUT_POSTINGS
from blockwatch.deposits import CONFIRMED, REORGED_AFTER_CREDIT, deposit_op_id
from storage import stafflog
from ledger.redpackets import CLAIMED_OUT, EXPIRED, OPEN, expire_op_id
from storage.models import (
    WITHDRAWAL_FINAL, Account, Balance, Deposit, Operation, Outbox, Posting, RedPacket, RedPacketClaim, Sweep,
    TxAttempt, Withdrawal, now_ms,
)


@dataclasses.dataclass
class AuditReport:
    violations: list[str] = dataclasses.field(default_factory=list)
    postings: int = 0
    operations: int = 0
    accounts: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, message: str) -> None:
        if len(self.violations) < 1000:  # bounded report; one violation is already an alarm
            self.violations.append(message)


def run_audit(now: int | None = None) -> AuditReport:
    """Every check against the database; `now` (ms, default the wall clock) dates the money in transit."""
    report = AuditReport()
    kinds = {a: (k, s, u) for a, k, s, u in Account.select(Account.id, Account.kind, Account.shard,
                                                              Account.username).tuples()}
    report.accounts = len(kinds)
    computed, posted_ops = _sum_postings(report, kinds)
    transit_ids = {a for a, (kind, _, name) in kinds.items() if kind == "system" and name.startswith("system:transit:")}
    in_transit = _check_balances(report, kinds, computed, transit_ids)
    op_ids = _check_operations(report, posted_ops)
    _check_transit(report, in_transit, op_ids, now_ms() if now is None else now)
    _check_deposits(report, op_ids)
    _check_withdrawals(report, op_ids)
    _check_red_packets(report, kinds, op_ids)
    _check_sweeps(report)
    for problem in stafflog.verify():
        report.add(problem)
    return report


def _sum_postings(report: AuditReport, kinds: dict) -> tuple[dict, set[str]]:
    computed: dict[tuple[int, str, str], int] = collections.defaultdict(int)
    posted_ops: set[str] = set()
    query = Posting.select(Posting.op_id, Posting.asset, Posting.debit_account, Posting.debit_bucket,
                           Posting.credit_account, Posting.credit_bucket, Posting.amount, Posting.shard)
    for op_id, asset, dr, drb, cr, crb, amount, shard in query.tuples().iterator():
        report.postings += 1
        posted_ops.add(op_id)
        if amount <= 0:
            report.add(f"posting of {op_id} has non-positive amount {amount}")
        for account, bucket in ((dr, drb), (cr, crb)):
            if account not in kinds:
                report.add(f"posting of {op_id} names unknown account {account}")
            elif kinds[account][1] != shard:
                report.add(f"posting of {op_id} on shard {shard} touches account {account} of shard {kinds[account][1]}")
            if bucket not in (AVAILABLE, FROZEN):
                report.add(f"posting of {op_id} has unknown bucket {bucket!r}")
        computed[(dr, asset, drb)] -= amount
        computed[(cr, asset, crb)] += amount
    return computed, posted_ops


def _check_balances(report: AuditReport, kinds: dict, computed: dict, transit_ids: set[int]) -> dict[str, int]:
    """Checks 1-3 on the stored balances; returns the money held by the transit accounts, per asset."""
    totals: dict[str, int] = collections.defaultdict(int)
    in_transit: dict[str, int] = collections.defaultdict(int)
    seen = set()
    for account, asset, available, frozen in Balance.select(
            Balance.account_id, Balance.asset, Balance.available, Balance.frozen).tuples().iterator():
        if account in transit_ids:
            in_transit[asset] += available + frozen
        for bucket, stored in ((AVAILABLE, available), (FROZEN, frozen)):
            seen.add((account, asset, bucket))
            expected = computed.get((account, asset, bucket), 0)
            if stored != expected:
                report.add(f"balance {account}/{asset}/{bucket} is {stored} but its postings sum to {expected}")
            totals[asset] += stored
            if kinds.get(account, ("user",))[0] == "user" and stored < 0:
                report.add(f"user account {account} has negative {asset} {bucket} balance {stored}")
    for key, value in computed.items():
        if key not in seen and value != 0:
            report.add(f"postings give {key} = {value} but no balance row exists")
    for asset, total in totals.items():
        if total != 0:
            report.add(f"balances of {asset} sum to {total}, not zero")
    return in_transit


def _check_operations(report: AuditReport, posted_ops: set[str]) -> set[str]:
    """Check 4; returns every operation id (the later checks look their op ids up in it). A refused
    cross-shard credit is an operation without postings (the record that it was refused), and so is an
    approval of a withdrawal."""
    op_ids, refused, without_postings = set(), set(), set()
    for op_id, kind in Operation.select(Operation.op_id, Operation.kind).tuples().iterator():
        report.operations += 1
        op_ids.add(op_id)
        if kind == REFUSED_CREDIT_KIND:
            refused.add(op_id)
        elif kind in KINDS_WITHOUT_POSTINGS:
            without_postings.add(op_id)
    for op_id in op_ids - posted_ops - refused - without_postings:
        report.add(f"operation {op_id} has no postings")
    for op_id in refused & posted_ops:
        report.add(f"refused credit {op_id} has postings")
    for op_id in posted_ops - op_ids:
        report.add(f"postings of {op_id} have no operation")
    return op_ids


def _check_transit(report: AuditReport, in_transit: dict[str, int], op_ids: set[str], now: int) -> None:
    owed: dict[str, int] = collections.defaultdict(int)
    returns_of: set[str] = set()  # refused credits whose return is in some outbox
    rows = Outbox.select(Outbox.op_id, Outbox.source_op_id, Outbox.payload, Outbox.delivered_at, Outbox.created_at)
    for op_id, source_op_id, payload, delivered_at, created_at in rows.tuples().iterator():
        data = json.loads(payload)
        if data.get("kind") == "return":
            returns_of.add(source_op_id)
        if op_id in op_ids:  # the credit is applied (or refused, and its return owes the money now)
            continue
        if delivered_at is not None:
            report.add(f"outbox credit {op_id} is marked delivered but was never applied")
        if now - created_at > TRANSIT_AGE_MAX_MS:
            report.add(f"outbox credit {op_id} ({data['asset']} {data['amount']}) has waited in transit "
                       f"{(now - created_at) // 1000} s, longer than {TRANSIT_AGE_MAX_MS // 1000} s")
        owed[data["asset"]] += int(data["amount"])
    refused = {op_id for (op_id,) in Operation.select(Operation.op_id).where(
        Operation.kind == REFUSED_CREDIT_KIND).tuples().iterator()}
    for op_id in sorted(refused - returns_of):
        report.add(f"refused credit {op_id} has no return in any outbox")
    for asset in set(in_transit) | set(owed):
        if in_transit.get(asset, 0) != owed.get(asset, 0):
            report.add(f"{asset} in transit is {in_transit.get(asset, 0)} but undelivered credits owe "
                       f"{owed.get(asset, 0)}")


def _check_deposits(report: AuditReport, op_ids: set[str]) -> None:
    statuses = {deposit_op_id(chain_id, tx_hash, log_index): status for chain_id, tx_hash, log_index, status in
                Deposit.select(Deposit.chain_id, Deposit.tx_hash, Deposit.log_index, Deposit.status)
                .tuples().iterator()}
    credits = {op for op in op_ids if op.startswith("d:")}
    for op_id, status in statuses.items():
        if status == CONFIRMED and op_id not in credits:
            report.add(f"deposit {op_id} is confirmed but its credit operation does not exist")
    for op_id in credits:
        status = statuses.get(op_id)
        if status not in (CONFIRMED, REORGED_AFTER_CREDIT):
            report.add(f"credit operation {op_id} belongs to no credited deposit (deposit status {status})")


def _check_withdrawals(report: AuditReport, op_ids: set[str]) -> None:
    """8. frozen = the amount + fee of the account's open withdrawals, per account and asset; every withdrawal
    has its request operation; a confirmed one has exactly one winning hash, among its attempts; no two
    withdrawals share a lane's nonce."""
    open_frozen: dict[tuple[int, str], int] = collections.defaultdict(int)
    for wid, op_id, account, asset, amount, fee, status, tx_hash in Withdrawal.select(
            Withdrawal.id, Withdrawal.op_id, Withdrawal.account_id, Withdrawal.asset, Withdrawal.amount,
            Withdrawal.fee, Withdrawal.status, Withdrawal.tx_hash).tuples().iterator():
        if op_id not in op_ids:
            report.add(f"withdrawal {wid} has no request operation {op_id}")
        if status not in WITHDRAWAL_FINAL:
            open_frozen[(account, asset)] += amount + fee
        if status == "confirmed" and not tx_hash:
            report.add(f"withdrawal {wid} is confirmed without a winning hash")
    frozen = {(a, s): f for a, s, f in Balance.select(Balance.account_id, Balance.asset, Balance.frozen)
              .where(Balance.frozen != 0).tuples().iterator()}
    users = {a for (a,) in Account.select(Account.id).where(Account.kind == "user").tuples()}
    for key in set(open_frozen) | {k for k in frozen if k[0] in users}:
        if frozen.get(key, 0) != open_frozen.get(key, 0):
            report.add(f"account {key[0]} has {frozen.get(key, 0)} {key[1]} frozen but its open withdrawals hold "
                       f"{open_frozen.get(key, 0)}")
    winners = collections.Counter(ref for (ref,) in TxAttempt.select(TxAttempt.ref_id).where(
        (TxAttempt.purpose == "withdrawal") & (TxAttempt.status == "mined")).tuples())
    for wid, tx_hash in Withdrawal.select(Withdrawal.id, Withdrawal.tx_hash).where(
            Withdrawal.status == "confirmed").tuples():
        if winners.get(wid, 0) != 1:
            report.add(f"confirmed withdrawal {wid} has {winners.get(wid, 0)} mined attempts, not exactly one")
        elif not TxAttempt.select().where((TxAttempt.tx_hash == tx_hash) & (TxAttempt.ref_id == wid)).exists():
            report.add(f"confirmed withdrawal {wid} names winning hash {tx_hash}, which is none of its attempts")
    shared = (Withdrawal.select(Withdrawal.lane, Withdrawal.nonce, peewee.fn.COUNT(Withdrawal.id))
              .where(Withdrawal.nonce.is_null(False)).group_by(Withdrawal.lane, Withdrawal.nonce)
              .having(peewee.fn.COUNT(Withdrawal.id) > 1).tuples())
    for lane, nonce, count in shared:
        report.add(f"{count} withdrawals share nonce {nonce} of lane {lane}")


def _check_sweeps(report: AuditReport) -> None:
    """10. Custody moves change no user's money; their gas leaves `fees` once each, for what the chain charged."""
    booked: dict[str, int] = collections.defaultdict(int)
    for op_id, amount in Posting.select(Posting.op_id, Posting.amount).where(Posting.op_id.startswith("sw:")).tuples():
        booked[op_id] += int(amount)
    owed = {f"sw:{i}": int(gas or 0) for i, gas in Sweep.select(Sweep.id, Sweep.gas_paid).where(
        Sweep.status.in_(("confirmed", "failed"))).tuples()}
    for op_id in set(booked) | {o for o, gas in owed.items() if gas}:
        if booked.get(op_id, 0) != owed.get(op_id, 0):
            report.add(f"treasury move {op_id[3:]} burnt {owed.get(op_id, 'nothing final')} wei of gas but "
                       f"{booked.get(op_id, 0)} is booked to fees")
    shared = (Sweep.select(Sweep.from_address, Sweep.nonce, peewee.fn.COUNT(Sweep.id))
              .where(Sweep.nonce.is_null(False)).group_by(Sweep.from_address, Sweep.nonce)
              .having(peewee.fn.COUNT(Sweep.id) > 1).tuples())
    for lane, nonce, count in shared:
        report.add(f"{count} treasury moves share nonce {nonce} of {lane}")
    cold = set(Sweep.select(Sweep.from_address, Sweep.nonce).where(Sweep.kind == "cold").tuples())
    if cold:  # a cold move signs on the hot wallet's lane: never with a withdrawal's nonce
        lanes = {lane for lane, _ in cold}
        for lane, nonce in Withdrawal.select(Withdrawal.lane, Withdrawal.nonce).where(
                Withdrawal.lane.in_(list(lanes))).tuples():
            if (lane, nonce) in cold:
                report.add(f"a cold move and a withdrawal share nonce {nonce} of {lane}")


def _check_red_packets(report: AuditReport, kinds: dict, op_ids: set[str]) -> None:
    escrow = {(shard, name.split(":")[1]): a for a, (kind, shard, name) in kinds.items()
              if kind == "system" and name.startswith("system:escrow:")}
    held: dict[tuple[int, str], int] = collections.defaultdict(int)  # (escrow account, asset) -> balance
    for account, asset, available, frozen in Balance.select(Balance.account_id, Balance.asset, Balance.available,
                                                            Balance.frozen).tuples().iterator():
        if account in escrow.values():
            held[(account, asset)] += available + frozen
    claims: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)  # packet -> [(amount, op id)]
    for packet_id, amount, op_id in RedPacketClaim.select(RedPacketClaim.red_packet_id, RedPacketClaim.amount,
                                                          RedPacketClaim.op_id).tuples().iterator():
        claims[packet_id].append((amount, op_id))
    owed: dict[tuple[int, str], int] = collections.defaultdict(int)
    for row in RedPacket.select().iterator():
        made = claims.pop(row.id, [])
        claimed = sum(amount for amount, _ in made)
        name = f"red packet {row.id}"
        if row.total != claimed + row.refunded + row.remaining:
            report.add(f"{name}: total {row.total} != claims {claimed} + refunded {row.refunded} + left {row.remaining}")
        if len(made) != row.shares - row.shares_left:
            report.add(f"{name}: {len(made)} claims but {row.shares - row.shares_left} shares taken")
        if any(amount < 1 for amount, _ in made):
            report.add(f"{name}: a claim of less than one base unit")
        if row.status == OPEN and not (row.remaining > 0 and row.shares_left > 0):
            report.add(f"{name}: open with {row.remaining} left in {row.shares_left} shares")
        elif row.status == CLAIMED_OUT and (row.remaining or row.shares_left or row.refunded):
            report.add(f"{name}: claimed_out but {row.remaining} left in {row.shares_left} shares, {row.refunded} refunded")
        elif row.status == EXPIRED and (row.remaining or (row.refunded > 0) != (expire_op_id(row.id) in op_ids)):
            report.add(f"{name}: expired with {row.remaining} left, refund {row.refunded} without its one operation")
        elif row.status not in (OPEN, CLAIMED_OUT, EXPIRED):
            report.add(f"{name}: unknown status {row.status!r}")
        for op_id in [row.create_op_id] + [op for _, op in made]:
            if op_id not in op_ids:
                report.add(f"{name}: operation {op_id} is not applied")
        if row.status == OPEN:
            account = escrow.get((row.shard, "escrow"))
            owed[(account, row.asset)] += row.remaining
    for packet_id in claims:
        report.add(f"claims of red packet {packet_id}, which does not exist")
    for key in set(held) | set(owed):
        if held.get(key, 0) != owed.get(key, 0):
            report.add(f"escrow account {key[0]} holds {held.get(key, 0)} {key[1]} but open red packets have "
                       f"{owed.get(key, 0)} left")
