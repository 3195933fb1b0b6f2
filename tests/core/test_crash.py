"""Crash safety: a wallet process under a transfer storm is killed with SIGKILL at random moments, again and
again, and restarted each time (a restart replays the undelivered outbox). In the end every acknowledged
transfer is stored exactly once with its postings, no operation is half-applied, every cross-shard credit
has been delivered, the audit passes, and user money adds up to what was funded."""

from __future__ import annotations

import collections
import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.db import connect_database
from storage.models import Account, Balance, Operation, Outbox, Posting
from app.audit import run_audit

from tests.core.support import undelivered_outbox, user_total
from tests.helpers import fund, register, wait_until

log = logging.getLogger(__name__)

KILLS = 6
USERS = 16
OPENING_BALANCE = 1_000_000
ACKS_BEFORE_KILL = 40  # new acknowledged transfers to see before the kill is armed
KILL_DELAY_MAX_S = 0.5
ROOT = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, url: str, redis_prefix: str, ack_file: Path, log_file: Path, tag: str, idle: bool = False):
        args = [sys.executable, "-m", "tests.core.crash_worker", url, redis_prefix, str(ack_file), tag]
        self.log_file = log_file
        with open(log_file, "ab") as stderr:
            self.proc = subprocess.Popen(args + (["--idle"] if idle else []), cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=stderr)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_file.read_text()[-3000:]}")
        return True

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def acked_lines(path: Path) -> list[dict]:
    """The worker writes each line with one write(2) to an O_APPEND file, so a kill leaves whole lines."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1]]


@pytest.mark.slow
def test_sigkill_under_a_transfer_storm_loses_nothing_and_applies_nothing_twice(systems, tmp_path):
    system = systems(pool=USERS)
    users = [register(system, f"user{i}") for i in range(USERS)]
    for user in users:
        fund(system, user.account_id, OPENING_BALANCE)
    system.stop()
    ack_file, log_file = tmp_path / "acks.jsonl", tmp_path / "worker.log"
    rng = random.Random()
    owed_at_kill = []
    workers: list[Worker] = []
    try:
        for round_ in range(KILLS):
            seen = len(acked_lines(ack_file))
            worker = Worker(systems.url, systems.redis_prefix, ack_file, log_file, f"r{round_}")
            workers.append(worker)
            wait_until(lambda: worker.alive() and len(acked_lines(ack_file)) >= seen + ACKS_BEFORE_KILL,
                       timeout_s=90, what=f"worker {round_} acknowledging transfers")
            time.sleep(rng.uniform(0, KILL_DELAY_MAX_S))  # a random moment inside the storm
            worker.kill()
            owed_at_kill.append(credits_owed())
        final = Worker(systems.url, systems.redis_prefix, ack_file, log_file, "final", idle=True)
        workers.append(final)
        wait_until(lambda: final.alive() and undelivered_outbox() == 0, timeout_s=90,
                   what="the restarted system to deliver the outbox left by the kills")
        assert final.stop() == 0
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(timeout=30)

    acks = acked_lines(ack_file)
    log.warning("crash test: %d kills, %d acknowledged transfers, credits owed (not yet applied) at each kill: %s",
                KILLS, len(acks), owed_at_kill)
    assert any(owed_at_kill), "no kill left a credit unapplied: the restart's outbox replay was not exercised"
    assert credits_owed() == 0
    connect_database(systems.url)
    assert_acknowledged_transfers_stored_exactly_once(acks)
    assert_no_operation_half_applied()
    report = run_audit()
    assert report.ok, report.violations
    assert user_total() == USERS * OPENING_BALANCE


def credits_owed() -> int:
    """Outbox credits committed by their source but not (yet) applied by their target."""
    applied = {op for (op,) in Operation.select(Operation.op_id).where(Operation.kind == "xcredit").tuples()}
    return sum(1 for (op,) in Outbox.select(Outbox.op_id).tuples() if op not in applied)


def transit_accounts() -> dict[int, int]:
    return {int(name.rsplit(":", 1)[1]): account for account, name in Account.select(
        Account.id, Account.username).where(Account.username.startswith("system:transit:")).tuples()}


def postings_by_op() -> dict[str, list[tuple[int, int, int]]]:
    postings = collections.defaultdict(list)
    for op_id, debit, credit, amount in Posting.select(Posting.op_id, Posting.debit_account,
                                                       Posting.credit_account, Posting.amount).tuples():
        postings[op_id].append((debit, credit, amount))
    return postings


def assert_acknowledged_transfers_stored_exactly_once(acks: list[dict]) -> None:
    assert len({a["op"] for a in acks}) == len(acks)
    stored = collections.Counter(op for (op,) in Operation.select(Operation.op_id).tuples())
    postings = postings_by_op()
    transit = transit_accounts()
    shard_of = dict(Account.select(Account.id, Account.shard).tuples())
    for ack in acks:
        op = ack["op"]
        assert stored[op] == 1, op
        if ack["status"] == "in_transit":
            assert postings[op] == [(ack["from"], transit[shard_of[ack["from"]]], ack["amount"])]
            assert stored["x:" + op] == 1, op
            assert postings["x:" + op] == [(transit[ack["to_shard"]], ack["to"], ack["amount"])]
        else:
            assert ack["status"] == "completed"
            assert postings[op] == [(ack["from"], ack["to"], ack["amount"])]


def assert_no_operation_half_applied() -> None:
    """Acknowledged or not, every stored transfer is whole: one posting, and if it crossed shards, its
    outbox row delivered and its credit applied once."""
    postings = postings_by_op()
    stored = {op: kind for op, kind in Operation.select(Operation.op_id, Operation.kind).tuples()}
    outbox = {op: (source, delivered) for op, source, delivered in Outbox.select(
        Outbox.op_id, Outbox.source_op_id, Outbox.delivered_at).tuples()}
    for op, kind in stored.items():
        assert len(postings[op]) == 1, (op, postings[op])
    assert set(postings) == set(stored)
    for credit_op, (source_op, delivered_at) in outbox.items():
        assert stored.get(source_op) == "transfer" and stored.get(credit_op) == "xcredit", credit_op
        assert delivered_at is not None, credit_op
    transfers_in_transit = {op for op in stored if "x:" + op in stored}
    assert transfers_in_transit == {source for source, _ in outbox.values()}
    transit_ids = set(transit_accounts().values())
    in_transit = sum(av + fr for a, av, fr in Balance.select(Balance.account_id, Balance.available,
                                                             Balance.frozen).tuples() if a in transit_ids)
    assert in_transit == 0  # sources' transit accounts owe exactly what targets' have paid out
