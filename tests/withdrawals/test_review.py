"""Review and the signer's switches through the admin API, on real anvil, MariaDB and Redis: four eyes, the
pause, roles, two reviewers at once, 200 withdrawals approved at once getting 200 consecutive nonces, and every
bad request refused with a stable code and nothing changed."""

from __future__ import annotations

import concurrent.futures

import pytest

from app.audit import run_audit
from storage import stafflog
from storage.models import Operation, PoolKey, Posting, TxAttempt, Withdrawal
from tests.withdrawals.support import ETH, N, RECIPIENT, open_bank


def assert_audit_ok():
    report = run_audit()
    assert report.ok, report.violations


def test_four_eyes_needs_two_reviewers_and_refuses_the_same_one_twice(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, withdraw_four_eyes_above=(("ETH", ETH // 2),))
    try:
        alice = bank.funded_user("alice", eth=2 * ETH)
        bank.fund_hot_wallet(eth=2 * ETH)
        big = bank.requested(alice, ETH)
        first = bank.approve(big["id"], as_="rita")
        assert first.status_code == 200 and first.json["status"] == "reviewing"
        assert bank.sign().signed == 0  # one approval above the threshold does not sign
        twice = bank.approve(big["id"], as_="rita")
        assert twice.status_code == 409 and twice.json["code"] == "already_approved"
        detail = bank.admin("GET", f"/withdrawals/{big['id']}").json
        assert [a["admin"] for a in detail["approvals"]] == ["rita"]  # who approved first
        second = bank.approve(big["id"], as_="rob")
        assert second.json["status"] == "approved"
        assert bank.sign().signed == 1
        log = stafflog.history(f"withdrawal:{big['id']}")
        assert [(e.action, e.admin_name) for e in log] == [("withdrawal.approve", "rita"), ("withdrawal.approve", "rob")]
        assert_audit_ok()
    finally:
        bank.stop()


def test_nothing_is_signed_while_paused_and_everything_after_resume(bank):
    alice = bank.funded_user("alice", eth=ETH)
    bank.fund_hot_wallet(eth=ETH)
    paused = bank.admin("POST", "/withdrawals/pause", as_="otto", json={"reason": "incident 42"})
    assert paused.status_code == 200 and paused.json == {"signing_paused": True, "changed": True}
    ids = [bank.requested(alice, ETH // 10)["id"] for _ in range(3)]  # requests still queue while paused
    for withdrawal_id in ids:
        assert bank.approve(withdrawal_id).json["status"] == "approved"
    assert bank.sign().signed == 0
    assert TxAttempt.select().count() == 0
    assert bank.admin("GET", "/hot-wallet", as_="aude").json["signing_paused"] is True
    resumed = bank.admin("POST", "/withdrawals/resume", as_="otto")
    assert resumed.json == {"signing_paused": False, "changed": True}
    bank.sign()
    assert {bank.status(i) for i in ids} == {"broadcast"}
    actions = [e.action for e in stafflog.StaffAction.select().order_by(stafflog.StaffAction.id)]
    assert actions.count("signing_paused.engage") == 1 and actions.count("signing_paused.release") == 1
    assert_audit_ok()


def test_roles_and_tokens_are_enforced_and_refusals_change_nothing(bank):
    alice = bank.funded_user("alice", eth=ETH)
    accepted = bank.requested(alice, ETH // 10)
    path = f"/withdrawals/{accepted['id']}/approve"
    before = (Operation.select().count(), stafflog.StaffAction.select().count())
    assert bank.admin("POST", path, as_="aude").status_code == 403  # an auditor changes nothing
    assert bank.admin("POST", path, as_="otto").status_code == 403  # an operator does not review
    assert bank.admin("POST", "/withdrawals/pause", as_="rita").status_code == 403  # a reviewer cannot pause
    no_token = bank.api.client.post(f"/admin/api/v1{path}")
    assert no_token.status_code == 401 and no_token.json["code"] == "unauthorized"
    user_token = bank.api.client.post(f"/admin/api/v1{path}", headers=alice.auth)
    assert user_token.status_code == 401 and user_token.json["code"] == "invalid_token"
    assert (Operation.select().count(), stafflog.StaffAction.select().count()) == before
    assert bank.status(accepted["id"]) == "reviewing"
    assert bank.admin("GET", "/withdrawals?status=reviewing", as_="aude").json["withdrawals"][0]["id"] == accepted["id"]
    unknown = bank.approve("999999")
    assert unknown.status_code == 404 and unknown.json["code"] == "unknown_withdrawal"


def test_two_reviewers_approving_at_once_one_wins(bank):
    alice = bank.funded_user("alice", eth=ETH)
    for _ in range(5):
        withdrawal_id = bank.requested(alice, ETH // 100)["id"]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda who: bank.approve(withdrawal_id, as_=who), ["rita", "rob"]))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409], [a.json for a in answers]
        assert bank.status(withdrawal_id) == "approved"
        assert len(stafflog.history(f"withdrawal:{withdrawal_id}")) == 1
    assert_audit_ok()


def test_200_withdrawals_approved_at_once_get_200_consecutive_nonces_and_all_confirm(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, pool=60)
    try:
        _two_hundred(bank)
    finally:
        bank.stop()


def _two_hundred(bank):
    users = [bank.wallet.user(f"user{i}") for i in range(50)]
    from devnet.anvil import DEV_KEYS, send_eth

    for _, address in users:
        send_eth(bank.node.url, DEV_KEYS[0], address, ETH // 10)
    bank.node.mine(N)
    bank.wallet.scan_clean()
    bank.fund_hot_wallet(eth=50 * ETH)
    amount = ETH // 1000
    ids = []
    for user, _ in users:
        ids += [bank.requested(user, amount)["id"] for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: bank.approve(i, as_="rita" if int(i) % 2 else "rob"), ids))
    assert {a.status_code for a in answers} == {200}
    bank.sign()
    nonces = sorted(w.nonce for w in Withdrawal.select())
    assert nonces == list(range(nonces[0], nonces[0] + 200))
    assert bank.chain_balance(RECIPIENT) == 200 * amount
    bank.settle(blocks=N - 1)
    assert {w.status for w in Withdrawal.select()} == {"confirmed"}
    for user, _ in users:
        assert bank.balance(user)[1] == 0
    assert_audit_ok()


@pytest.fixture
def alice(bank):
    return bank.funded_user("alice", eth=ETH)


def bad_requests(bank, alice):
    own = PoolKey.select(PoolKey.address).first().address
    good = {"asset": "ETH", "to_address": RECIPIENT, "amount": "1000", "pay_password": "pay-123456", "speed": "slow"}
    return [
        ("bad checksum", {**good, "to_address": RECIPIENT.replace("dEaD", "DeaD")}, 400, "invalid_address"),
        ("zero address", {**good, "to_address": "0x" + "0" * 40}, 400, "zero_address"),
        ("own deposit address", {**good, "to_address": own}, 400, "own_address"),
        ("hot wallet", {**good, "to_address": bank.hot}, 400, "own_address"),
        ("not hex", {**good, "to_address": "0x" + "g" * 40}, 400, "invalid_address"),
        ("no 0x", {**good, "to_address": "00" * 20}, 400, "invalid_address"),
        ("too short", {**good, "to_address": "0x1234"}, 400, "invalid_address"),
        ("below the minimum", {**good, "amount": "999"}, 422, "amount_below_minimum"),
        ("over the daily limit", {**good, "amount": str(10**17 + 1)}, 422, "daily_limit_exceeded"),
        ("over balance with the fee", {**good, "amount": str(6 * 10**16)}, 422, "insufficient_funds"),
        ("unknown asset", {**good, "asset": "DOGE"}, 400, "unknown_asset"),
        ("token without a fee", {**good, "asset": "TKN2"}, 400, "unknown_asset"),
        ("wrong pay password", {**good, "pay_password": "wrong-pass"}, 403, "wrong_pay_password"),
        ("amount zero", {**good, "amount": "0"}, 400, "invalid_amount"),
        ("amount negative", {**good, "amount": "-5"}, 400, "invalid_amount"),
        ("amount fractional", {**good, "amount": "1.5"}, 400, "invalid_amount"),
        ("amount a number", {**good, "amount": 1000}, 400, "invalid_amount"),
        ("unknown speed", {**good, "speed": "warp"}, 400, "validation_error"),
        ("extra field", {**good, "memo": "hi"}, 400, "validation_error"),
    ]


def test_bad_requests_get_a_stable_code_and_change_nothing(node, mysql_url, redis_prefix):
    bank = open_bank(node, mysql_url, redis_prefix, withdraw_min=(("ETH", 1000),),
                     withdraw_daily_limit=(("ETH", 10**17),))
    try:
        alice = bank.funded_user("alice", eth=ETH // 20)
        rows = lambda: (Withdrawal.select().count(), Operation.select().count(), Posting.select().count())  # noqa: E731
        before, balance = rows(), bank.balance(alice)
        for name, body, status, code in bad_requests(bank, alice):
            answer = bank.api.client.post("/api/v1/withdrawals", json=body,
                                          headers={**alice.auth, "Idempotency-Key": bank.new_key()})
            assert (answer.status_code, answer.json.get("code")) == (status, code), (name, answer.json)
            assert answer.mimetype == "application/problem+json"
        malformed = bank.api.client.post("/api/v1/withdrawals", data="{not json",
                                         headers={**alice.auth, "Idempotency-Key": bank.new_key(),
                                                  "Content-Type": "application/json"})
        assert (malformed.status_code, malformed.json["code"]) == (400, "malformed_json")
        no_key = bank.api.client.post("/api/v1/withdrawals", json={}, headers=alice.auth)
        assert (no_key.status_code, no_key.json["code"]) == (400, "idempotency_key_missing")
        assert rows() == before and bank.balance(alice) == balance
        mallory = bank.funded_user("mallory", eth=0)
        mine = bank.requested(alice, 10**15)["id"]
        for method, path in (("GET", f"/api/v1/withdrawals/{mine}"), ("POST", f"/api/v1/withdrawals/{mine}/cancel"),
                             ("GET", "/api/v1/withdrawals/424242"), ("GET", "/api/v1/withdrawals/abc")):
            answer = bank.api.client.open(path, method=method, headers=mallory.auth)
            assert answer.status_code == 404, (path, answer.json)
        assert bank.status(mine) == "reviewing"
        bank.approve(mine)
        late = bank.api.client.post(f"/api/v1/withdrawals/{mine}/cancel", headers=alice.auth)
        assert (late.status_code, late.json["code"]) == (409, "withdrawal_state_conflict")  # cancel after approval
        assert_audit_ok()
    finally:
        bank.stop()


def test_staff_read_the_webhook_endpoints_and_their_delivery_log(bank):
    from core.keys import KeyRing
    from storage.webhooks import add_endpoint
    from tests.conftest import MASTER_KEY
    from tests.helpers import wait_until

    ring = KeyRing.single(MASTER_KEY)  # the bank's (tests.conftest.make_config)
    endpoint_id, _secret = add_endpoint("http://hooks:s3cret@127.0.0.1:9/in?token=abc", ring)  # nothing on :9
    alice = bank.funded_user("alice", eth=ETH)
    accepted = bank.requested(alice, ETH // 10)
    listed = bank.admin("GET", "/webhooks", as_="aude")  # an auditor reads it
    assert listed.status_code == 200
    (endpoint,) = listed.json["endpoints"]
    assert endpoint["id"] == endpoint_id and endpoint["url"] == "http://127.0.0.1:9/in?…" and endpoint["active"]
    assert "secret" not in endpoint and "s3cret" not in listed.text and "abc" not in listed.text

    def alices_deliveries():
        page = bank.admin("GET", "/webhooks/deliveries?limit=200").json["deliveries"]
        mine = [d for d in page if d["account_id"] == alice.account_id]
        tried = [d for d in mine if d["attempts"] >= 1]
        return mine if tried and any(d["kind"] == "withdrawal.reviewing" for d in mine) else None

    mine = wait_until(alices_deliveries, timeout_s=30, what="the notifier tried alice's first event")
    # In order per account: the deposits' events go first and, undelivered, hold the withdrawal's back.
    assert {d["kind"] for d in mine} >= {"deposit.seen", "deposit.confirmed", "withdrawal.reviewing"}
    oldest = min(mine, key=lambda d: int(d["id"]))
    assert (oldest["kind"], oldest["status"], oldest["endpoint_id"]) == ("deposit.seen", "pending", endpoint_id)
    assert oldest["attempts"] >= 1 and oldest["last_error"] and oldest["next_attempt_at"]
    assert all(d["status"] == "pending" for d in mine)
    first = bank.admin("GET", "/webhooks/deliveries?limit=1")
    assert len(first.json["deliveries"]) == 1
    if first.json["next_before"] is not None:
        older = bank.admin("GET", f"/webhooks/deliveries?limit=1&before={first.json['next_before']}")
        assert older.status_code == 200 and older.json["deliveries"][0]["id"] != first.json["deliveries"][0]["id"]
    for bad in ("?status=lost", "?limit=0", "?limit=x", "?endpoint=-1", "?surprise=1"):
        refused = bank.admin("GET", "/webhooks/deliveries" + bad)
        assert (refused.status_code, refused.json["code"]) == (400, "validation_error"), bad
    as_user = bank.api.client.get("/admin/api/v1/webhooks/deliveries", headers=alice.auth)
    assert as_user.status_code == 401
    assert accepted["status"] == "reviewing"
