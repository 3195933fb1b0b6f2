"""Refusal records (idempotency_failure) have a retention: within it a retry under the key gets the first
problem again; after it the record is ignored (the retry is a new request) and its row is purged, in
bounded batches at most once a minute. The in-memory index holds only recent keys, at most a bound of them;
beyond the bound a key is looked up in the table rather than forgotten. Time is a fake clock."""

from __future__ import annotations

import dataclasses

from storage.db import database_proxy
from storage.models import now_ms
from tests.helpers import fund
from tests.web.conftest import Api, ledger_snapshot
from web import create_app, idempotency
from core.limits import REFUSAL_PURGE_BACKLOG_EVERY_MS as PURGE_BACKLOG_EVERY_MS
from core.limits import REFUSAL_PURGE_EVERY_MS as PURGE_EVERY_MS
from web.idempotency import RefusalIndex
from web.models import IdempotencyFailure
from web.transfers import OP_PREFIX

HOUR_S = 3600


class FakeClock:
    def __init__(self) -> None:
        self.ms = now_ms()

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def use_index(api: Api, clock: FakeClock, retention_s: int = HOUR_S, **bounds) -> RefusalIndex:
    """Give the front a refusal index on a fake clock (as if it had just started)."""
    api.front.refusals = RefusalIndex(retention_s, clock=clock, **bounds)
    return api.front.refusals


def refuse(api: Api, user, key: str, amount: str = "500"):
    """A transfer the ledger refuses (more than the sender has); its problem."""
    response = api.transfer(user, "bob", amount, key=key)
    assert response.status_code == 422 and response.json["code"] == "insufficient_funds", response.json
    return response.json


def rows() -> int:
    return IdempotencyFailure.select().count()


def attempt(user, key: str, amount: str = "500") -> idempotency.Attempt:
    return idempotency.Attempt.of(OP_PREFIX, user.account_id, key,
                                  {"to_username": "bob", "asset": "ETH", "amount": amount})


def test_the_retention_comes_from_the_configuration(api):
    assert api.front.refusals.retention_ms == 24 * HOUR_S * 1000  # the default: 24 h
    config = dataclasses.replace(api.system.config, idempotency_retention_s=120)
    assert Api(api.system, create_app(api.system, config)).front.refusals.retention_ms == 120_000


def test_created_at_is_indexed(any_api):
    indexed = [index.columns for index in database_proxy.obj.get_indexes("idempotency_failure")]
    assert ["created_at"] in indexed


def test_a_refusal_is_answered_within_the_retention_and_a_retry_after_it_is_a_new_request(any_api):
    clock = FakeClock()
    use_index(any_api, clock)
    alice = any_api.user("alice", funds=100)
    bob = any_api.user("bob", login=False)
    poor = refuse(any_api, alice, "poor")
    fund(any_api.system, alice.account_id, 1_000)
    before = ledger_snapshot(), any_api.balance(alice)
    clock.advance(HOUR_S)  # the last millisecond of the retention
    assert any_api.transfer(alice, "bob", "500", key="poor").json == poor
    assert any_api.transfer(alice, "bob", "5", key="poor").json["code"] == "idempotency_key_reused"
    assert (ledger_snapshot(), any_api.balance(alice)) == before

    clock.advance(0.001)  # expired: the same key and body are a new request, and now it succeeds
    done = any_api.transfer(alice, "bob", "500", key="poor")
    assert done.status_code == 201, done.json
    any_api.wait_balance(bob, (500, 0))
    assert any_api.balance(alice) == (600, 0)
    again = any_api.transfer(alice, "bob", "500", key="poor")  # from now on the shard answers replays
    assert (again.status_code, again.json) == (201, done.json)
    assert any_api.balance(alice) == (600, 0) and any_api.balance(bob) == (500, 0)


def test_a_refusal_after_an_expired_one_is_recorded_afresh(any_api):
    clock = FakeClock()
    use_index(any_api, clock)
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    first = refuse(any_api, alice, "poor", "500")
    clock.advance(HOUR_S + 1)
    # Expired: another body under the key is no conflict any more, and its refusal replaces the old record.
    second = refuse(any_api, alice, "poor", "400")
    assert second == first and rows() == 1  # the same problem, for the new body
    row = IdempotencyFailure.get()
    assert (row.created_at, row.fingerprint) == (clock.ms, attempt(alice, "poor", "400").fingerprint)
    fund(any_api.system, alice.account_id, 1_000)
    clock.advance(HOUR_S - 1)  # the new record is live: still answered, even though it would now succeed
    assert any_api.transfer(alice, "bob", "400", key="poor").json == second
    assert any_api.transfer(alice, "bob", "500", key="poor").json["code"] == "idempotency_key_reused"
    assert any_api.balance(alice) == (1_100, 0)


def test_a_restarted_front_loads_only_records_within_the_retention(any_api):
    clock = FakeClock()
    use_index(any_api, clock, retention_s=3 * HOUR_S)
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    refuse(any_api, alice, "old")
    clock.advance(2 * HOUR_S)
    recent = refuse(any_api, alice, "recent")
    fund(any_api.system, alice.account_id, 1_000)
    clock.advance(2 * HOUR_S)  # "old" has expired, "recent" has not

    restarted = Api(any_api.system, create_app(any_api.system))
    index = use_index(restarted, clock, retention_s=3 * HOUR_S, purge_batch=1)
    assert index.may_have(attempt(alice, "recent")) and not index.may_have(attempt(alice, "old"))
    assert len(index) == 1
    assert restarted.transfer(alice, "bob", "500", key="recent").json == recent
    assert restarted.transfer(alice, "bob", "500", key="old").status_code == 201
    assert any_api.balance(alice) == (600, 0)


def test_beyond_the_bound_a_refusal_is_looked_up_not_forgotten(any_api):
    clock = FakeClock()
    index = use_index(any_api, clock, keys_max=2)
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    problems, k1_at = {}, clock.ms
    for key in ("k1", "k2", "k3"):
        problems[key] = refuse(any_api, alice, key)
        clock.advance(60)
    assert len(index) == 2 and rows() == 3
    fund(any_api.system, alice.account_id, 1_000)
    before = ledger_snapshot(), any_api.balance(alice)
    for key in ("k1", "k2", "k3"):  # k1 is not held: found in the table
        assert any_api.transfer(alice, "bob", "500", key=key).json == problems[key]
    assert (ledger_snapshot(), any_api.balance(alice)) == before

    # A restarted front with the same bound holds the newest two and still finds k1 in the table.
    restarted = Api(any_api.system, create_app(any_api.system))
    reloaded = use_index(restarted, clock, keys_max=2)
    assert restarted.transfer(alice, "bob", "500", key="k1").json == problems["k1"]
    assert len(reloaded) == 2

    # Once every record not held has expired, a new key needs no lookup (and k1 is a new request).
    clock.ms = k1_at + HOUR_S * 1000 + 1  # k1 (the oldest) is past the retention; k2 and k3 are not
    for current in (index, reloaded):
        assert not current.may_have(attempt(alice, "fresh"))
        assert not current.may_have(attempt(alice, "k1")) and current.may_have(attempt(alice, "k2"))
    assert any_api.transfer(alice, "bob", "500", key="k1").status_code == 201
    assert any_api.transfer(alice, "bob", "500", key="k2").json == problems["k2"]
    assert any_api.balance(alice) == (600, 0)


def expired_rows(account_id: int, count: int, created_at: int) -> None:
    """Refusal rows recorded long ago (as by an earlier run of the service)."""
    IdempotencyFailure.insert_many([
        {"account_id": account_id, "key_hash": f"{n:064x}", "fingerprint": "0" * 64, "status": 422,
         "problem": "{}", "created_at": created_at} for n in range(count)]).execute()


def test_expired_rows_are_purged_in_bounded_batches_at_most_once_a_minute(any_api):
    clock = FakeClock()
    use_index(any_api, clock, purge_batch=2)
    alice = any_api.user("alice", funds=1_000_000)
    any_api.user("bob", login=False)
    live = refuse(any_api, alice, "live", "10000000")  # the first money request purged nothing: none expired
    expired_rows(alice.account_id, 5, clock.ms - HOUR_S * 1000 - 1)
    assert rows() == 6

    def request() -> None:  # any money request runs the purge when it is due
        assert any_api.transfer(alice, "bob", "1").status_code == 201

    clock.advance(PURGE_EVERY_MS / 1000 - 1)
    request()
    assert rows() == 6  # not due yet
    clock.advance(1)
    request()
    assert rows() == 4  # one batch
    request()
    assert rows() == 4  # a full batch: the next one is due sooner, but not at once
    clock.advance(PURGE_BACKLOG_EVERY_MS / 1000)
    request()
    assert rows() == 2
    clock.advance(PURGE_BACKLOG_EVERY_MS / 1000)
    request()
    assert rows() == 1  # the last expired row; the live record stays
    expired_rows(alice.account_id + 1, 1, 0)
    clock.advance(PURGE_BACKLOG_EVERY_MS / 1000)
    request()
    assert rows() == 2  # the batch was not full: back to once a minute
    clock.advance(PURGE_EVERY_MS / 1000)
    request()
    assert rows() == 1
    assert any_api.transfer(alice, "bob", "10000000", key="live").json == live
