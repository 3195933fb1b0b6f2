"""Concurrency at the issue's numbers: 16 threads x 1,000 random transfers among 200 accounts on 4 shards
(half of them cross-shard), with replays of operation ids already acknowledged, on MariaDB + Redis.
Afterwards every credit is delivered, the audit passes, totals are exact, every acknowledged operation is
stored exactly once, and balances match a model rebuilt from the acknowledged transfers alone."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import random
import threading
import time

import pytest

from core import messages as m
from storage.models import Account, Operation, Posting
from app.audit import run_audit
from core.errors import InsufficientFunds

from tests.core.support import db_balances, undelivered_outbox, user_total
from tests.helpers import register, wait_until

log = logging.getLogger(__name__)

THREADS = 16
TRANSFERS_PER_THREAD = 1000
ACCOUNTS = 200
SHARDS = 4
OPENING_BALANCE = 30_000
AMOUNT_MAX = 5_000  # large enough against the opening balance that some transfers are refused
REPLAY_RATE = 0.1


@dataclasses.dataclass(frozen=True)
class Acked:
    transfer: m.Transfer
    status: str


class Storm:
    """The shared record of what was acknowledged (and refused), filled by the sender threads."""

    def __init__(self, system, users: list[m.Registered]) -> None:
        self.system = system
        self.users = users
        self.by_shard = collections.defaultdict(list)
        for user in users:
            self.by_shard[user.shard].append(user)
        self.acked: list[Acked] = []
        self.refused: list[str] = []
        self.replays = 0
        self.lock = threading.Lock()

    def sender(self, thread: int) -> None:
        rng = random.Random(thread)
        for n in range(TRANSFERS_PER_THREAD):
            self.one_transfer(rng, f"c{thread}-{n}")
            if rng.random() < REPLAY_RATE:
                self.one_replay(rng)

    def one_transfer(self, rng: random.Random, op_id: str) -> None:
        sender = rng.choice(self.users)
        if rng.random() < 0.5:
            recipient = rng.choice([u for u in self.by_shard[sender.shard] if u is not sender])
        else:
            recipient = rng.choice(self.by_shard[rng.choice([s for s in range(SHARDS) if s != sender.shard])])
        command = m.Transfer(op_id, sender.account_id, recipient.account_id, recipient.shard, "ETH",
                             rng.randint(1, AMOUNT_MAX))
        try:
            result = self.system.router.command(command)
        except InsufficientFunds:
            with self.lock:
                self.refused.append(op_id)
            return
        assert result == m.OpResult(op_id, "completed" if recipient.shard == sender.shard else "in_transit")
        with self.lock:
            self.acked.append(Acked(command, result.status))

    def one_replay(self, rng: random.Random) -> None:
        with self.lock:
            earlier = rng.choice(self.acked) if self.acked else None
        if earlier is None:
            return
        again = self.system.router.command(earlier.transfer)
        assert again == m.OpResult(earlier.transfer.op_id, earlier.status, replayed=True)
        with self.lock:
            self.replays += 1


def open_accounts(system) -> list[m.Registered]:
    users = [register(system, f"user{i}") for i in range(ACCOUNTS)]
    futures = [system.router.shard_ref(u.shard).ask(m.Credit(f"open-{u.account_id}", u.account_id, "ETH",
                                                             OPENING_BALANCE), block=False) for u in users]
    assert all(f.get(timeout=60).status == "completed" for f in futures)
    return users


def model_balances(users: list[m.Registered], acked: list[Acked]) -> dict[int, int]:
    balances = {u.account_id: OPENING_BALANCE for u in users}
    for item in acked:
        balances[item.transfer.account_id] -= item.transfer.amount
        balances[item.transfer.to_account] += item.transfer.amount
    return balances


@pytest.mark.slow
def test_sixteen_threads_of_transfers_leave_the_ledger_exact(systems):
    system = systems(pool=ACCOUNTS, shards=SHARDS, ask_timeout_s=120.0)
    users = open_accounts(system)
    assert sorted(collections.Counter(u.shard for u in users).values()) == [ACCOUNTS // SHARDS] * SHARDS
    storm = Storm(system, users)
    stats_before = [system.router.ask_shard(s, m.GetStats()) for s in range(SHARDS)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(storm.sender, t) for t in range(THREADS)]:
            future.result()  # re-raises a failed assertion of any thread
    elapsed = time.monotonic() - started
    stats = [system.router.ask_shard(s, m.GetStats()) for s in range(SHARDS)]
    batches = sum(after.batches - before.batches for before, after in zip(stats_before, stats))
    commands = len(storm.acked) + len(storm.refused) + storm.replays
    log.warning("storm: %d acked, %d refused, %d replays in %.1f s; %d batches (%.1f commands a batch)",
                len(storm.acked), len(storm.refused), storm.replays, elapsed, batches, commands / max(batches, 1))
    assert len(storm.acked) + len(storm.refused) == THREADS * TRANSFERS_PER_THREAD
    assert storm.refused and storm.replays >= THREADS * TRANSFERS_PER_THREAD * REPLAY_RATE / 2
    cross = [a for a in storm.acked if a.status == "in_transit"]
    assert 0.4 < len(cross) / len(storm.acked) < 0.6

    wait_until(lambda: undelivered_outbox() == 0, timeout_s=60, what="every outbox credit delivered")
    model = model_balances(users, storm.acked)
    memory = {u.account_id: system.router.balances(u.account_id)["ETH"] for u in users}
    assert memory == {a: (b, 0) for a, b in model.items()}
    assert db_balances(model) == {a: (b, 0) for a, b in model.items()}
    assert user_total() == ACCOUNTS * OPENING_BALANCE
    assert_every_acked_operation_stored_once(storm)
    system.stop()
    report = run_audit()
    assert report.ok, report.violations


def assert_every_acked_operation_stored_once(storm: Storm) -> None:
    stored = collections.Counter(op for (op,) in Operation.select(Operation.op_id).tuples())
    postings = collections.defaultdict(list)
    for op_id, debit, credit, amount in Posting.select(Posting.op_id, Posting.debit_account,
                                                       Posting.credit_account, Posting.amount).tuples():
        postings[op_id].append((debit, credit, amount))
    transfers = {op for op, kind in Operation.select(Operation.op_id, Operation.kind).tuples() if kind == "transfer"}
    assert transfers == {a.transfer.op_id for a in storm.acked}  # no refused one, no stranger
    transit = {int(name.rsplit(":", 1)[1]): account for account, name in Account.select(
        Account.id, Account.username).where(Account.username.startswith("system:transit:")).tuples()}
    shard_of = {u.account_id: u.shard for u in storm.users}
    for item in storm.acked:
        cmd = item.transfer
        assert stored[cmd.op_id] == 1
        if item.status == "in_transit":  # sender -> source transit, then target transit -> recipient
            assert postings[cmd.op_id] == [(cmd.account_id, transit[shard_of[cmd.account_id]], cmd.amount)]
            assert stored["x:" + cmd.op_id] == 1
            assert postings["x:" + cmd.op_id] == [(transit[cmd.to_shard], cmd.to_account, cmd.amount)]
        else:
            assert postings[cmd.op_id] == [(cmd.account_id, cmd.to_account, cmd.amount)]
    assert not any(stored[op] for op in storm.refused)
