"""Message injection into the TransrvShard actors of a running system (MariaDB + Redis): group commit,
a batch the real database refuses (at the write or before it), cross-shard delivery, and queries ordered
after the commits before them."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import pymysql
import pytest

from core import messages as m
from storage.models import Operation, Outbox
from app.audit import run_audit
from core.errors import CommitFailed, UnknownMessage

from tests.core.support import db_balances, row_counts, unique_op
from tests.helpers import fund, register, wait_until


def raw_connection(url: str) -> pymysql.connections.Connection:
    """A connection of our own, outside the system's pool, as an operator's would be."""
    parsed = urlparse(url)
    return pymysql.connect(host=parsed.hostname, port=parsed.port or 3306, user=parsed.username or "root",
                           password=parsed.password or "", database=parsed.path.lstrip("/"), autocommit=True)


def transfer(op_id: str, sender: m.Registered, recipient: m.Registered, amount: int) -> m.Transfer:
    return m.Transfer(op_id, sender.account_id, recipient.account_id, recipient.shard, "ETH", amount)


def test_concurrent_asks_are_answered_by_group_commit(systems):
    system = systems()
    alice = register(system, "alice")
    ref = system.router.shard_ref(alice.shard)
    before = ref.ask(m.GetStats())
    count = 300
    futures = [ref.ask(m.Credit(unique_op("c"), alice.account_id, "ETH", 7), block=False) for _ in range(count)]
    replies = [f.get(timeout=60) for f in futures]
    stats = ref.ask(m.GetStats())
    assert all(r.status == "completed" and not r.replayed for r in replies)
    batches = stats.batches - before.batches
    assert 1 <= batches < count, stats
    assert system.router.balances(alice.account_id)["ETH"] == (7 * count, 0)
    assert db_balances([alice.account_id]) == {alice.account_id: (7 * count, 0)}
    assert Operation.select().where(Operation.kind == "credit").count() == count


def test_a_batch_the_database_refuses_fails_for_every_sender_and_changes_nothing(systems):
    system = systems()
    alice, bob, carol, dave, erin = (register(system, n) for n in ("alice", "bob", "carol", "dave", "erin"))
    assert alice.shard == erin.shard != bob.shard
    fund(system, alice.account_id, 10_000)
    committed = transfer(unique_op("t"), alice, erin, 100)
    assert system.router.command(committed).status == "completed"
    people = [alice, bob, carol, dave, erin]
    memory_before = {p.account_id: system.router.balances(p.account_id) for p in people}
    db_before, rows_before = db_balances(p.account_id for p in people), row_counts()
    ref = system.router.shard_ref(alice.shard)
    commands = [transfer(unique_op("t"), alice, recipient, 10 + i)
                for i, recipient in enumerate([bob, carol, dave, erin] * 5)]  # same- and cross-shard

    operator = raw_connection(systems.url)
    try:
        operator.cursor().execute("RENAME TABLE posting TO posting_x")
        futures = [ref.ask(cmd, block=False) for cmd in commands]
        replay = ref.ask(committed, block=False)
        errors = []
        for future in futures:
            with pytest.raises(CommitFailed) as caught:
                future.get(timeout=30)
            errors.append(caught.value.code)
        assert errors == ["commit_failed"] * len(commands)
        assert replay.get(timeout=30) == m.OpResult(committed.op_id, "completed", replayed=True)
        assert {p.account_id: system.router.balances(p.account_id) for p in people} == memory_before
        assert db_balances(p.account_id for p in people) == db_before
        assert ref.ask(m.GetStats()).outbox_undelivered == 0
    finally:
        operator.cursor().execute("RENAME TABLE posting_x TO posting")
        operator.close()
    assert row_counts() == rows_before

    first = [ref.ask(cmd, block=False) for cmd in commands]
    assert [f.get(timeout=30).replayed for f in first] == [False] * len(commands)
    again = [ref.ask(cmd, block=False) for cmd in commands]
    assert [f.get(timeout=30).replayed for f in again] == [True] * len(commands)
    sent = sum(c.amount for c in commands)
    assert system.router.balances(alice.account_id)["ETH"] == (10_000 - 100 - sent, 0)
    op_ids = [c.op_id for c in commands]
    assert Operation.select().where(Operation.op_id.in_(op_ids)).count() == len(commands)
    wait_until(lambda: Outbox.select().where(Outbox.delivered_at.is_null()).count() == 0, what="credits delivered")
    expected_bob = sum(c.amount for c in commands if c.to_account == bob.account_id)
    assert system.router.balances(bob.account_id)["ETH"] == (expected_bob, 0)
    system.stop()
    report = run_audit()
    assert report.ok, report.violations


def test_cross_shard_credit_is_delivered_and_acknowledged(systems):
    system = systems()
    alice, bob = register(system, "alice"), register(system, "bob")
    fund(system, alice.account_id, 500)
    result = system.router.transfer(unique_op("x"), alice.account_id, bob.account_id, "ETH", 200)
    assert result.status == "in_transit"
    wait_until(lambda: system.router.balances(bob.account_id)["ETH"] == (200, 0), what="credit applied")
    # The acknowledgement reaches the source, which marks the outbox row delivered with its next write.
    wait_until(lambda: Outbox.get(Outbox.source_op_id == result.op_id).delivered_at is not None,
               what="outbox row marked delivered")
    stats = system.router.ask_shard(alice.shard, m.GetStats())
    assert stats.outbox_undelivered == 0


def test_queries_wait_for_the_batch_before_them(systems):
    """A GetBalances queued behind money commands is answered after their commit: nobody reads money
    that might still be rolled back."""
    system = systems()
    alice = register(system, "alice")
    ref = system.router.shard_ref(alice.shard)
    credits = [ref.ask(m.Credit(unique_op("c"), alice.account_id, "ETH", 1), block=False) for _ in range(50)]
    balance = ref.ask(m.GetBalances(alice.account_id), block=False)
    assert balance.get(timeout=30).of("ETH") == (50, 0)
    assert all(f.get(timeout=30).status == "completed" for f in credits)


def test_a_database_failing_before_the_write_answers_every_sender(systems):
    """The replay lookup reads the operation table first; if the database fails there, every sender of
    the batch still gets CommitFailed (none is left waiting for a reply) and the shard lives on."""
    system = systems()
    alice = register(system, "alice")
    ref = system.router.shard_ref(alice.shard)
    commands = [m.Credit(unique_op("c"), alice.account_id, "ETH", 3) for _ in range(30)]
    operator = raw_connection(systems.url)
    try:
        operator.cursor().execute("RENAME TABLE operation TO operation_x")
        futures = [ref.ask(cmd, block=False) for cmd in commands]
        for future in futures:
            with pytest.raises(CommitFailed):
                future.get(timeout=30)
    finally:
        operator.cursor().execute("RENAME TABLE operation_x TO operation")
        operator.close()
    assert ref.is_alive() and system.router.shard_ref(alice.shard) is ref
    assert system.router.balances(alice.account_id)["ETH"] == (0, 0)
    assert all(f.get(timeout=30).status == "completed" for f in [ref.ask(c, block=False) for c in commands])
    assert system.router.balances(alice.account_id)["ETH"] == (90, 0)


def test_a_told_money_command_that_fails_is_logged_and_the_shard_lives_on(systems, caplog):
    """A told Credit used to raise from the batch and stop the shard; now it is one log line with its code."""
    system = systems()
    alice = register(system, "alice")
    ref = system.router.shard_ref(alice.shard)
    with caplog.at_level(logging.ERROR, logger="actors.base"):
        ref.tell(m.Credit(unique_op("c"), alice.account_id, "NOPE", 5))  # unknown asset: refused for good
        ref.tell(m.Debit(unique_op("d"), alice.account_id, "ETH", 5))  # more than alice has
        assert ref.ask(m.Ping(), timeout=10) == m.Pong(f"shard-{alice.shard}")  # after both, in order
    assert ref.is_alive() and system.router.shard_ref(alice.shard) is ref  # not even restarted
    refused = [(r.message_type, r.code) for r in caplog.records if r.getMessage() == "told message refused"]
    assert refused == [("Credit", "unknown_asset"), ("Debit", "insufficient_funds")]
    assert system.router.balances(alice.account_id)["ETH"] == (0, 0)
    assert fund(system, alice.account_id, 7).status == "completed"  # and it goes on applying money


def test_an_unknown_question_to_a_shard_is_a_typed_error(systems):
    system = systems()
    alice = register(system, "alice")
    with pytest.raises(UnknownMessage):
        system.router.ask_shard(alice.shard, m.PoolStatus())  # the allocator's question, asked of a shard
    assert system.router.balances(alice.account_id)["ETH"] == (0, 0)
