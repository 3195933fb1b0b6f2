"""Idempotency-Key: a replay answers the first response (a success or a refusal) and moves money once;
another body under the same key is refused; a duplicate while the first is in flight gets 409."""

from __future__ import annotations

import secrets

import pytest
import redis

from core.errors import OperationInProgress
from storage.models import Operation, Posting
from tests.conftest import REDIS_URL
from tests.helpers import fund
from web.app import create_app
from tests.web.conftest import Api, ledger_snapshot
from web import idempotency
from web.idempotency import InFlight
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
    # The first request, still being processed (role all: the marks are this process's, shared by its apps).
    with any_api.front.inflight.hold(op_id):
        duplicate = any_api.transfer(alice, "bob", "10", key="in-flight")
    assert duplicate.status_code == 409 and duplicate.json["code"] == "operation_in_progress"
    assert (ledger_snapshot(), any_api.balance(alice)) == before
    # Once the first is done, the key works (and the mark was not left behind by the refused duplicate).
    done = any_api.transfer(alice, "bob", "10", key="in-flight")
    assert done.status_code == 201 and done.json["id"] == op_id
    assert any_api.balance(alice) == (990, 0)


def test_fronts_that_share_redis_see_each_others_marks():
    """Where fronts are separate processes, the mark lives in Redis: another front's hold is seen, and a
    mark expires by itself within the TTL (a crashed front frees its keys)."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"wallet-test-{secrets.token_hex(4)}"
    mine, other = (InFlight(redis.Redis.from_url(REDIS_URL), prefix, 5_000) for _ in range(2))
    try:
        with other.hold("t:1:k"):
            ttl = client.pttl(f"{prefix}:inflight:t:1:k")
            with pytest.raises(OperationInProgress):
                with mine.hold("t:1:k"):
                    pass
        assert 0 < ttl <= 5_000
        assert client.exists(f"{prefix}:inflight:t:1:k") == 0  # released when the first was done
        with mine.hold("t:1:k"):
            pass
    finally:
        client.close()


def test_apps_of_one_system_share_its_marks(any_api):
    """Two apps built on one actor system (the API and, say, a second listener) share the in-flight marks."""
    second = create_app(any_api.system)
    with any_api.front.inflight.hold("t:1:shared"):
        with pytest.raises(OperationInProgress):
            with second.extensions["wallet"].inflight.hold("t:1:shared"):
                pass


def test_a_refusal_is_answered_again_under_its_key(any_api):
    """A refused request is a decision too: the same key and body get the same problem even once the
    request would succeed, and another body under that key is refused. Only the business refusal is
    remembered: a wrong pay password or an invalid body leaves the key free."""
    alice = any_api.user("alice", funds=100)
    bob = any_api.user("bob", login=False)
    poor = any_api.transfer(alice, "bob", "500", key="poor")
    assert poor.status_code == 422 and poor.json["code"] == "insufficient_funds"
    fund(any_api.system, alice.account_id, 1_000)
    before = ledger_snapshot(), any_api.balance(alice)
    again = any_api.transfer(alice, "bob", "500", key="poor")
    assert (again.status_code, again.json, again.mimetype) == (422, poor.json, "application/problem+json")
    reused = any_api.transfer(alice, "bob", "50", key="poor")
    assert reused.status_code == 422 and reused.json["code"] == "idempotency_key_reused"
    assert (ledger_snapshot(), any_api.balance(alice)) == before

    nobody = any_api.transfer(alice, "dave", "5", key="to-dave")
    assert nobody.status_code == 404 and nobody.json["code"] == "unknown_account"
    any_api.user("dave", login=False)
    assert any_api.transfer(alice, "dave", "5", key="to-dave").json == nobody.json
    doge = any_api.transfer(alice, "bob", "5", asset="DOGE", key="doge")
    assert doge.status_code == 400 and doge.json["code"] == "unknown_asset"
    assert any_api.transfer(alice, "bob", "5", key="doge").json["code"] == "idempotency_key_reused"
    assert (ledger_snapshot(), any_api.balance(alice)) == before

    wrong_pay = any_api.transfer(alice, "bob", "5", key="not-decided", pay_password="wrong-pay")
    assert wrong_pay.status_code == 403
    invalid = any_api.transfer(alice, "bob", "-5", key="not-decided")
    assert invalid.status_code == 400 and invalid.json["code"] == "invalid_amount"
    assert any_api.transfer(alice, "bob", "7", key="not-decided").status_code == 201
    any_api.wait_balance(bob, (7, 0))
    assert any_api.balance(alice) == (1_093, 0)


def test_a_refusal_recorded_by_an_earlier_front_is_still_answered(any_api):
    """The front keeps an in-memory index of refused keys (no query on the success path); a new front, as
    after a restart, loads it from the table."""
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    poor = any_api.transfer(alice, "bob", "500", key="poor")
    assert poor.status_code == 422
    fund(any_api.system, alice.account_id, 1_000)
    restarted = Api(any_api.system, create_app(any_api.system))
    again = restarted.transfer(alice, "bob", "500", key="poor")
    assert (again.status_code, again.json) == (422, poor.json)
    assert restarted.transfer(alice, "bob", "5", key="poor").json["code"] == "idempotency_key_reused"
    assert restarted.balance(alice) == (1_100, 0)
