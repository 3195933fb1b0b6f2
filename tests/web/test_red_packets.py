"""Red packets over HTTP: send, claim, the sender's view, history; 1,000 concurrent claimants on a 100-share
packet; replays; bad input refused with a code and nothing changed."""

from __future__ import annotations

import threading

import pytest

from app.audit import run_audit
from core import messages as m
from storage.models import Operation, Outbox, RedPacket, RedPacketClaim
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.web.conftest import PAY_PASSWORD, Api, ledger_snapshot, password_hashes

CLAIMANTS = 1_000


def send(api: Api, user, total="1000", shares=10, mode="random", expires_in_s=3600, key=None, asset="ETH",
         pay_password=PAY_PASSWORD):
    body = {"asset": asset, "total": total, "shares": shares, "mode": mode, "expires_in_s": expires_in_s,
            "pay_password": pay_password}
    return api.client.post("/api/v1/red-packets", json=body,
                           headers={**user.auth, "Idempotency-Key": key or api.new_key()})


def claim(client, user, code, key=None):
    headers = dict(user.auth)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"/api/v1/red-packets/{code}/claim", headers=headers)


def drained() -> bool:
    return Outbox.select().where(Outbox.delivered_at.is_null()).count() == 0


def test_send_claim_view_and_history(any_api):
    alice = any_api.user("alice", funds=1_000)
    bob, carol = any_api.user("bob"), any_api.user("carol")
    sent = send(any_api, alice, total="1000", shares=3, mode="equal")
    assert sent.status_code == 201, sent.json
    packet = sent.json
    assert packet["status"] == "open" and len(packet["code"]) == 42
    assert any_api.balance(alice) == (0, 0)
    got = [claim(any_api.client, u, packet["code"]) for u in (bob, carol, alice)]  # alice claims her own
    assert [r.status_code for r in got] == [200, 200, 200]
    assert [r.json["amount"] for r in got] == ["333", "333", "334"]
    assert {r.json["red_packet_id"] for r in got} == {packet["id"]}
    again = claim(any_api.client, bob, packet["code"])
    assert (again.status_code, again.json["code"]) == (409, "already_claimed")
    any_api.wait_balance(bob, (333, 0))
    any_api.wait_balance(carol, (333, 0))
    assert any_api.balance(alice) == (334, 0)

    view = any_api.client.get(f"/api/v1/red-packets/{packet['id']}", headers=alice.auth)
    assert view.status_code == 200
    assert [(c["username"], c["amount"]) for c in view.json["claimed"]] == [("bob", "333"), ("carol", "333"),
                                                                            ("alice", "334")]
    assert (view.json["status"], view.json["remaining"], view.json["total"]) == ("claimed_out", "0", "1000")
    stranger = any_api.client.get(f"/api/v1/red-packets/{packet['id']}", headers=bob.auth)
    assert (stranger.status_code, stranger.json["code"]) == (404, "unknown_red_packet")

    kinds = [e["kind"] for e in any_api.client.get("/api/v1/history", headers=alice.auth).json["entries"]]
    assert "red_packet" in kinds and "red_packet_claim" in kinds
    wait_until(lambda: [e["kind"] for e in any_api.client.get("/api/v1/history", headers=bob.auth).json["entries"]]
               == ["red_packet_claim"], what="bob's history names the claim")
    wait_until(drained, what="outbox drained")
    report = run_audit()
    assert report.ok, report.violations


def test_a_replayed_send_and_claim_answer_the_same(api):
    alice, bob = api.user("alice", funds=10**6), api.user("bob")
    first = send(api, alice, total="1000000", shares=7, key="send-1")
    again = send(api, alice, total="1000000", shares=7, key="send-1")
    assert again.status_code == 201 and again.json == first.json
    other = send(api, alice, total="999999", shares=7, key="send-1")
    assert (other.status_code, other.json["code"]) == (422, "idempotency_key_reused")
    code = first.json["code"]
    one = claim(api.client, bob, code, key="claim-1")
    two = claim(api.client, bob, code, key="claim-1")
    assert one.status_code == two.status_code == 200 and one.json == two.json
    three = claim(api.client, bob, code, key="claim-2")
    assert (three.status_code, three.json["code"]) == (409, "already_claimed")
    assert RedPacket.select().count() == 1 and RedPacketClaim.select().count() == 1


@pytest.fixture
def crowd(mysql_url, redis_prefix):
    """A system with room for a thousand and one accounts (the pool), MariaDB + Redis."""
    from tests.helpers import start_system
    from web import create_app

    config = make_config(mysql_url, redis_prefix)
    system = start_system(config, pool=CLAIMANTS + 10)
    yield Api(system, create_app(system))
    system.stop()


def test_a_thousand_concurrent_claimants_on_a_hundred_shares(crowd):
    api = crowd
    sender = api.user("sender", funds=10**18)
    total = 10**18 - 12_345
    sent = send(api, sender, total=str(total), shares=100)
    assert sent.status_code == 201, sent.json
    code = sent.json["code"]
    password_hash, pay_hash = password_hashes()
    users = []
    for n in range(CLAIMANTS):  # sessions made directly: 1,000 argon2 logins are not what is tested
        reg = api.system.router.ask_actor("allocator", m.Register(f"claimant{n}", password_hash, pay_hash))
        token, _ = api.front.sessions.create(reg.account_id)
        users.append(type("U", (), {"account_id": reg.account_id,
                                    "auth": {"Authorization": f"Bearer {token}"}})())
    answers: list = [None] * CLAIMANTS
    gate = threading.Barrier(CLAIMANTS)

    def claimant(i: int) -> None:
        client = api.app.test_client()
        gate.wait()
        response = claim(client, users[i], code)
        answers[i] = (response.status_code, response.json)

    threads = [threading.Thread(target=claimant, args=(i,)) for i in range(CLAIMANTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    won = [body for status, body in answers if status == 200]
    lost = [body["code"] for status, body in answers if status != 200]
    assert len(won) == 100 and lost == ["claimed_out"] * (CLAIMANTS - 100)
    amounts = [int(body["amount"]) for body in won]
    assert sum(amounts) == total and min(amounts) >= 1
    claims = list(RedPacketClaim.select(RedPacketClaim.account_id, RedPacketClaim.amount))
    assert len({c.account_id for c in claims}) == 100 and sorted(c.amount for c in claims) == sorted(amounts)
    wait_until(drained, timeout_s=60, what="every cross-shard claim credited")
    for user, (status, body) in zip(users, answers):
        if status == 200:
            assert api.system.router.balances(user.account_id)["ETH"] == (int(body["amount"]), 0)
    report = run_audit()
    assert report.ok, report.violations


def _case(name, body=None, code=None, funds=1_000, status=400, error="validation_error"):
    return pytest.param(body, code, funds, status, error, id=name)


@pytest.mark.parametrize("body, header_code, funds, status, error", [
    _case("shares 0", {"shares": 0}),
    _case("shares above total", {"total": "5", "shares": 6}, error="invalid_red_packet"),
    _case("shares above the maximum", {"total": "100000", "shares": 10_001}),
    _case("total 0", {"total": "0"}),
    _case("unknown mode", {"mode": "lottery"}),
    _case("expires_in_s 0", {"expires_in_s": 0}),
    _case("expires_in_s above a day", {"expires_in_s": 86_401}),
    _case("shares as a string", {"shares": "3"}),
    _case("wrong pay password", {"pay_password": "not-the-pay-password"}, status=403, error="wrong_pay_password"),
    _case("insufficient balance", {"total": "1001"}, status=422, error="insufficient_funds"),
    _case("unknown asset", {"asset": "NOPE"}, error="unknown_asset"),
])
def test_bad_sends_are_refused_with_a_code_and_change_nothing(any_api, body, header_code, funds, status, error):
    alice = any_api.user("alice", funds=funds)
    before = ledger_snapshot()
    fields = {"total": "1000", "shares": 10, "mode": "random", "expires_in_s": 3600, "pay_password": PAY_PASSWORD,
              "asset": "ETH", **body}
    response = send(any_api, alice, **fields)
    assert (response.status_code, response.json["code"]) == (status, error), response.json
    assert ledger_snapshot() == before and RedPacket.select().count() == 0
    assert any_api.balance(alice) == (funds, 0)


@pytest.mark.parametrize("code", ["00" + "0" * 40, "99" + "a" * 40, "nope", "0" * 42 + "0", "01" + "G" * 40])
def test_claims_of_unknown_codes_are_404_and_change_nothing(any_api, code):
    bob = any_api.user("bob")
    before = ledger_snapshot()
    response = claim(any_api.client, bob, code)
    assert (response.status_code, response.json["code"]) == (404, "unknown_red_packet")
    assert ledger_snapshot() == before


def test_an_expired_packet_refuses_claims_and_its_rest_goes_back(api):
    alice, bob = api.user("alice", funds=100), api.user("bob")
    sent = send(api, alice, total="100", shares=4, mode="equal", expires_in_s=1)
    claim(api.client, bob, sent.json["code"])
    api.wait_balance(alice, (75, 0))  # the shards' tick refunds it once the second has passed
    late = claim(api.client, api.user("carol"), sent.json["code"])
    assert (late.status_code, late.json["code"]) == (410, "expired")
    assert Operation.select().where(Operation.kind == "red_packet_refund").count() == 1
    kinds = [e["kind"] for e in api.client.get("/api/v1/history", headers=alice.auth).json["entries"]]
    assert kinds[0] == "red_packet_refund"
    report = run_audit()
    assert report.ok, report.violations
