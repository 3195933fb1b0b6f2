"""Issue 9, finding 6: a cross-shard credit its target refuses for good comes back to the sender.

Before the fix a transfer to a recipient on another shard that could not hold the amount (balance_overflow;
any permanent refusal takes the same path) was answered 201 in_transit, debited the sender, and then the
money sat in `system:transit` for ever while `wallet audit` said ok. Now the target records the refusal
under the credit's op id (so a redelivery replays it and never applies it later) and, in the same
transaction, owes the sender a ReturnCredit ("r:" + the transfer's op id) through its outbox; the sender's
shard applies it once; history shows the transfer `returned`; and the audit reports money left in
transit longer than TRANSIT_AGE_MAX_MS.
"""

from __future__ import annotations

from app.audit import run_audit
from core import messages as m
from core.limits import AMOUNT_LIMIT, REDELIVER_AFTER_MS, TRANSIT_AGE_MAX_MS
from ledger.planning import REFUSED_CREDIT_KIND, credit_op_id, return_op_id
from storage.models import Operation, Outbox, Posting
from tests.core.support import unique_op
from tests.helpers import fund, wait_until
from tests.web.conftest import start_api
from tests.conftest import make_config

FULL = AMOUNT_LIMIT - 1  # a balance that cannot take one more base unit


def assert_audit_ok() -> None:
    report = run_audit()
    assert report.ok, report.violations


def test_a_credit_refused_for_good_is_returned_once_through_the_outbox(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    assert alice.shard != bob.shard
    source, target = env.shards[alice.shard], env.shards[bob.shard]
    env.fund(alice, 1000)
    env.fund(bob, FULL)
    op = unique_op("t")
    sent = env.run(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 400))
    assert sent.replies == [m.OpResult(op, "in_transit")]
    assert source.book.balance(alice.account_id, "ETH") == (600, 0)

    (refused,) = env.deliver(sent)  # the target cannot hold it: refused for good, recorded, returned
    assert refused == m.OpResult(credit_op_id(op), "returned")
    assert target.book.balance(bob.account_id, "ETH") == (FULL, 0)
    assert Operation.get(Operation.op_id == credit_op_id(op)).kind == REFUSED_CREDIT_KIND
    assert credit_op_id(op) not in source.outbox.unacked  # the credit is acknowledged: no more redelivery
    ((to_shard, back),) = [(entry.target_shard, entry.credit) for entry in target.outbox.unacked.values()]
    assert to_shard == alice.shard and isinstance(back, m.ReturnCredit)
    assert (back.op_id, back.account_id, back.amount, back.reason) == (return_op_id(op), alice.account_id, 400,
                                                                       "balance_overflow")
    assert_audit_ok()  # 400 in transit, owed by the return

    # A redelivery of the refused credit replays the refusal: no second return, nothing applied.
    again = env.run(bob.shard, sent.credits_to_send[0][1])
    assert again.replies == [m.OpResult(credit_op_id(op), "returned", replayed=True)] and again.credits_to_send == []

    returned = env.one(alice.shard, back)
    assert returned == m.OpResult(return_op_id(op), "completed")
    assert source.book.balance(alice.account_id, "ETH") == (1000, 0)
    assert source.book.balance(source.system["transit"], "ETH") == (0, 0)
    assert back.op_id not in target.outbox.unacked
    # The return applies once, however often it is delivered, also after a restart of the sender's shard.
    assert env.one(alice.shard, back) == m.OpResult(return_op_id(op), "completed", replayed=True)
    assert env.reload(alice.shard).book.balance(alice.account_id, "ETH") == (1000, 0)
    assert env.one(alice.shard, back).replayed
    assert Posting.select().where(Posting.op_id == return_op_id(op)).count() == 1
    for ledger in env.shards:
        ledger.flush_delivered()
    assert Outbox.select().where(Outbox.delivered_at.is_null()).count() == 0
    assert_audit_ok()


def test_a_lost_return_is_sent_again_and_survives_a_restart_of_the_refusing_shard(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    env.fund(alice, 1000)
    env.fund(bob, FULL)
    op = unique_op("t")
    env.deliver(env.run(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 10)))
    restarted = env.reload(bob.shard)  # the return's message was lost with the process
    ((to_shard, back),) = restarted.due_for_redelivery()
    assert (to_shard, back.op_id) == (alice.shard, return_op_id(op))
    env.clock.advance(REDELIVER_AFTER_MS)
    assert env.one(alice.shard, back).status == "completed"
    assert env.shards[alice.shard].book.balance(alice.account_id, "ETH") == (1000, 0)
    assert_audit_ok()


def test_the_audit_reports_money_left_in_transit_too_long(ledger_env):
    env = ledger_env
    alice, bob = env.open_account(), env.open_account()
    env.fund(alice, 1000)
    op = unique_op("t")
    env.run(alice.shard, m.Transfer(op, alice.account_id, bob.account_id, bob.shard, "ETH", 5))  # never delivered
    created = Outbox.get(Outbox.op_id == credit_op_id(op)).created_at
    assert run_audit(now=created + TRANSIT_AGE_MAX_MS).ok
    late = run_audit(now=created + TRANSIT_AGE_MAX_MS + 1)
    assert not late.ok and any("waited in transit" in v and credit_op_id(op) in v for v in late.violations), \
        late.violations


def test_a_returned_transfer_over_http_comes_back_and_shows_returned_in_history(mysql_url, redis_prefix):
    system, api = start_api(make_config(mysql_url, redis_prefix))
    try:
        alice = api.user("alice", funds=1000)
        bob = api.user("bob", login=False)
        while bob.shard == alice.shard:
            bob = api.user(f"bob{bob.account_id}", login=False)
        fund(system, bob.account_id, FULL)
        answer = api.transfer(alice, bob.username, "400")
        assert (answer.status_code, answer.json["status"]) == (201, "in_transit")
        api.wait_balance(alice, (1000, 0))
        assert api.balance(bob) == (FULL, 0)
        entries = api.client.get("/api/v1/history", headers=alice.auth).json["entries"]
        by_op = {entry["op_id"]: entry for entry in entries}
        sent, back = by_op[answer.json["id"]], by_op[return_op_id(answer.json["id"])]
        assert (sent["kind"], sent["amount"], sent["status"], sent["counterparty"]) == (
            "transfer", "-400", "returned", bob.username)
        assert (back["kind"], back["amount"], back["counterparty"]) == ("xreturn", "400", bob.username)
        wait_until(lambda: Outbox.select().where(Outbox.delivered_at.is_null()).count() == 0, timeout_s=30,
                   what="every outbox row acknowledged")
        assert_audit_ok()
    finally:
        system.stop()
