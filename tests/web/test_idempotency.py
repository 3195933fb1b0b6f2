"""Idempotency-Key: a replay answers the first response and moves money once; another body under the
same key is refused; a duplicate while the first is in flight gets 409."""

from __future__ import annotations

import redis

from storage.models import Operation, Posting
from tests.conftest import REDIS_URL
from tests.web.conftest import ledger_snapshot
from web import idempotency
from web.transfers import OP_PREFIX


def test_replay_answers_the_first_response_and_applies_once(any_api):
    alice = any_api.user("alice", funds=1_000)
    bob = any_api.user("bob")
    first = any_api.transfer(alice, "bob", "300", key="order-42")
    assert first.status_code == 201
    any_api.wait_balance(bob, (300, 0))
    for _ in range(3):
        again = any_api.transfer(alice, "bob", "300", key="order-42")
        assert (again.status_code, again.json) == (201, first.json)
    assert Operation.select().where(Operation.op_id == first.json["id"]).count() == 1
    assert Posting.select().where(Posting.op_id == first.json["id"]).count() == 1
    assert any_api.balance(alice) == (700, 0) and any_api.balance(bob) == (300, 0)

    # The key is per account: bob may use the same key for his own, separate operation.
    from_bob = any_api.transfer(bob, "alice", "5", key="order-42")
    assert from_bob.status_code == 201 and from_bob.json["id"] != first.json["id"]
    any_api.wait_balance(alice, (705, 0))


def test_same_key_with_another_body_is_refused(any_api):
    alice = any_api.user("alice", funds=1_000)
    bob = any_api.user("bob", login=False)
    any_api.user("carol", login=False)
    assert any_api.transfer(alice, "bob", "300", key="k1").status_code == 201
    any_api.wait_balance(bob, (300, 0))  # the cross-shard credit has landed: the ledger is quiet now
    before = ledger_snapshot(), any_api.balance(alice)
    for changed in ({"amount": "301"}, {"to_username": "carol"}):
        body = {"to": changed.get("to_username", "bob"), "amount": changed.get("amount", "300")}
        reused = any_api.transfer(alice, body["to"], body["amount"], key="k1")
        assert reused.status_code == 422 and reused.json["code"] == "idempotency_key_reused"
    assert (ledger_snapshot(), any_api.balance(alice)) == before


def test_a_duplicate_in_flight_gets_409(any_api):
    alice = any_api.user("alice", funds=1_000)
    any_api.user("bob", login=False)
    op_id = idempotency.op_id(OP_PREFIX, alice.account_id, "in-flight")
    before = ledger_snapshot(), any_api.balance(alice)
    if any_api.system.redis is not None:
        # Another front process holds the mark in Redis.
        client = redis.Redis.from_url(REDIS_URL)
        key = f"{any_api.system.config.redis_prefix}:inflight:{op_id}"
        assert client.set(key, "other-front", nx=True, ex=60)
        duplicate = any_api.transfer(alice, "bob", "10", key="in-flight")
        client.delete(key)
        client.close()
    else:
        with any_api.front.inflight.hold(op_id):  # the first request, still being processed
            duplicate = any_api.transfer(alice, "bob", "10", key="in-flight")
    assert duplicate.status_code == 409 and duplicate.json["code"] == "operation_in_progress"
    assert (ledger_snapshot(), any_api.balance(alice)) == before
    # Once the first is done, the key works (and the mark was not left behind by the refused duplicate).
    done = any_api.transfer(alice, "bob", "10", key="in-flight")
    assert done.status_code == 201 and done.json["id"] == op_id
    assert any_api.balance(alice) == (990, 0)
