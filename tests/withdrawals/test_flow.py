"""Withdrawals end to end through HTTP on real anvil, MariaDB and Redis: request → review → sign → broadcast →
confirmed at exactly N confirmations; the recipient's on-chain balance grows by exactly the amount, the user's
balance falls by amount + fee; a rejection and a cancel unfreeze exactly."""

from __future__ import annotations

import json

import pyotp

from app.audit import run_audit
from storage import stafflog
from storage.events import Event
from storage.models import TxAttempt, Withdrawal, now_ms
from tests.withdrawals.support import ETH, N, PAY_PASSWORD, RECIPIENT, TOKEN
from web.totp import STEP_S


def assert_audit_ok():
    report = run_audit()
    assert report.ok, report.violations


def withdrawal_events(withdrawal_id: str) -> list[tuple[str, int, dict]]:
    """(kind, account, data) of one withdrawal's webhook events, in commit order."""
    rows = Event.select().where(Event.kind.startswith("withdrawal.")).order_by(Event.id)
    events = [(e.kind, e.account_id, json.loads(e.payload)) for e in rows]
    return [e for e in events if e[2]["withdrawal_id"] == withdrawal_id]


def test_an_eth_withdrawal_confirms_at_exactly_n_confirmations(bank):
    alice = bank.funded_user("alice", eth=2 * ETH)
    bank.fund_hot_wallet(eth=10 * ETH)
    quote = bank.api.client.get("/api/v1/withdrawals/fees?asset=ETH", headers=alice.auth)
    assert quote.status_code == 200 and set(quote.json["fees"]) == {"slow", "standard", "fast"}
    before = bank.chain_balance(RECIPIENT)
    accepted = bank.requested(alice, ETH // 2, speed="fast")
    fee = int(accepted["fee"])
    assert accepted["status"] == "reviewing" and fee == int(quote.json["fees"]["fast"]) > 0
    assert bank.balance(alice) == (2 * ETH - ETH // 2 - fee, ETH // 2 + fee)
    assert bank.sign().signed == 0  # nothing is signed before a reviewer approves
    approved = bank.approve(accepted["id"])
    assert approved.status_code == 200 and approved.json["status"] == "approved"
    assert bank.sign().signed == 1
    assert bank.status(accepted["id"]) == "broadcast"
    (attempt,) = TxAttempt.select()
    assert bank.chain_balance(RECIPIENT) == before + ETH // 2  # anvil mined it at once
    bank.settle(blocks=N - 2)  # the block holding it and N - 2 on top: N - 1 confirmations
    assert bank.status(accepted["id"]) == "broadcast"
    detail = bank.detail(alice, accepted["id"])
    assert (detail["confirmations"], detail["hashes"], detail["tx_hash"]) == (N - 1, [attempt.tx_hash], attempt.tx_hash)
    bank.settle(blocks=1)
    assert bank.status(accepted["id"]) == "confirmed"
    detail = bank.detail(alice, accepted["id"])
    assert (detail["status"], detail["confirmations"], detail["needs_operator"]) == ("confirmed", N, False)
    assert bank.balance(alice) == (2 * ETH - ETH // 2 - fee, 0)
    row = Withdrawal.get_by_id(int(accepted["id"]))
    assert row.tx_hash == attempt.tx_hash and row.gas_paid > 0
    assert [e.action for e in stafflog.history(f"withdrawal:{row.id}")] == ["withdrawal.approve"]
    events = withdrawal_events(accepted["id"])
    assert [(kind, account) for kind, account, _ in events] == [
        (f"withdrawal.{s}", alice.account_id) for s in ("reviewing", "approved", "broadcast", "confirmed")]
    assert all((d["amount"], d["fee"], d["to_address"]) == (str(ETH // 2), str(fee), RECIPIENT) for *_, d in events)
    assert [d["tx_hash"] for *_, d in events] == [None, None, attempt.tx_hash, attempt.tx_hash]
    assert_audit_ok()


def test_a_token_withdrawal_pays_the_configured_fee_in_the_token(bank):
    bob = bank.funded_user("bob", tokens=5_000_000)
    bank.fund_hot_wallet(eth=ETH, tokens=10_000_000)
    before = bank.chain_balance(RECIPIENT, TOKEN)
    accepted = bank.requested(bob, 1_000_000, asset=TOKEN)
    assert accepted["fee"] == "2000"
    bank.approve(accepted["id"])
    assert bank.sign().signed == 1
    bank.settle(blocks=N - 1)
    assert bank.status(accepted["id"]) == "confirmed"
    assert bank.chain_balance(RECIPIENT, TOKEN) == before + 1_000_000
    assert bank.balance(bob, TOKEN) == (5_000_000 - 1_000_000 - 2_000, 0)
    assert_audit_ok()


def test_reject_and_cancel_unfreeze_exactly(bank):
    carol = bank.funded_user("carol", eth=ETH)
    first = bank.requested(carol, ETH // 4)
    second = bank.requested(carol, ETH // 5)
    rejected = bank.admin("POST", f"/withdrawals/{first['id']}/reject", json={"reason": "unknown destination"})
    assert rejected.status_code == 200 and rejected.json["status"] == "rejected"
    cancelled = bank.api.client.post(f"/api/v1/withdrawals/{second['id']}/cancel", headers=carol.auth)
    assert cancelled.status_code == 200 and cancelled.json == {"id": second["id"], "status": "cancelled"}
    assert bank.balance(carol) == (ETH, 0)
    again = bank.api.client.post(f"/api/v1/withdrawals/{second['id']}/cancel", headers=carol.auth)
    assert again.status_code == 409 and again.json["code"] == "withdrawal_state_conflict"
    assert bank.sign().signed == 0
    listed = bank.api.client.get("/api/v1/withdrawals", headers=carol.auth).json["withdrawals"]
    assert [(w["id"], w["status"]) for w in listed] == [(second["id"], "cancelled"), (first["id"], "rejected")]
    assert [k for k, *_ in withdrawal_events(first["id"])] == ["withdrawal.reviewing", "withdrawal.rejected"]
    assert withdrawal_events(first["id"])[-1][2]["reason"] == "unknown destination"
    assert [k for k, *_ in withdrawal_events(second["id"])] == ["withdrawal.reviewing", "withdrawal.cancelled"]
    assert_audit_ok()


def test_the_signer_waits_while_the_hot_wallet_cannot_cover_it(bank):
    dave = bank.funded_user("dave", eth=2 * ETH)
    bank.fund_hot_wallet(eth=ETH // 2)
    small = bank.requested(dave, ETH // 4)
    big = bank.requested(dave, ETH)  # more than the hot wallet holds
    for accepted in (small, big):
        bank.approve(accepted["id"])
    stats = bank.sign()
    assert (stats.signed, stats.waiting_for_funds) == (1, 1)  # counts since the signer started
    assert (bank.status(small["id"]), bank.status(big["id"])) == ("broadcast", "approved")
    hot = bank.admin("GET", "/hot-wallet", as_="aude").json
    assert hot["waiting_for_funds"] == 1 and hot["address"] == bank.hot
    bank.fund_hot_wallet(eth=2 * ETH)
    assert (bank.sign().signed, bank.status(big["id"])) == (2, "broadcast")
    bank.settle(blocks=N - 1)
    assert (bank.status(small["id"]), bank.status(big["id"])) == ("confirmed", "confirmed")
    assert_audit_ok()


def test_with_totp_enrolled_each_withdrawal_needs_a_fresh_code_and_a_retry_is_answered(bank):
    dave = bank.funded_user("dave", eth=ETH)
    client = bank.api.client
    secret = client.post("/api/v1/me/totp", headers=dave.auth, json={"pay_password": PAY_PASSWORD}).json["secret"]
    totp = pyotp.TOTP(secret, interval=STEP_S)
    step = now_ms() // 1000 // STEP_S
    assert client.post("/api/v1/me/totp/confirm", headers=dave.auth,
                       json={"code": totp.generate_otp(step - 1)}).status_code == 204
    missing = bank.request(dave, ETH // 10)
    assert (missing.status_code, missing.json["code"]) == (403, "totp_required")
    wrong = bank.request(dave, ETH // 10, totp_code="000000" if totp.generate_otp(step) != "000000" else "111111")
    assert (wrong.status_code, wrong.json["code"]) == (403, "wrong_totp_code")
    malformed = bank.request(dave, ETH // 10, totp_code="12345")
    assert (malformed.status_code, malformed.json["code"]) == (400, "validation_error")
    assert bank.balance(dave) == (ETH, 0) and Withdrawal.select().count() == 0
    code = totp.generate_otp(step)
    first = bank.request(dave, ETH // 10, key="totp-1", totp_code=code)
    assert first.status_code == 202, first.json
    retry = bank.request(dave, ETH // 10, key="totp-1", totp_code=code)  # the code is spent; the answer is the same
    assert (retry.status_code, retry.json) == (202, first.json)
    reused = bank.request(dave, ETH // 10, key="totp-2", totp_code=code)
    assert (reused.status_code, reused.json["code"]) == (403, "wrong_totp_code")
    assert Withdrawal.select().count() == 1
    assert bank.balance(dave) == (ETH - ETH // 10 - int(first.json["fee"]), ETH // 10 + int(first.json["fee"]))
    assert_audit_ok()


def test_a_node_that_exposes_keys_is_named_in_readyz_and_metrics_and_stays_ready(bank):
    before = bank.api.ops.get("/readyz")
    assert before.status_code == 200 and before.json["warnings"] == []  # not probed yet: nothing claimed
    (report,) = bank.wallet.system.probe_nodes()  # what `wallet serve` runs at start, in the background
    assert report.unlocked_accounts > 0 and "anvil" in report.exposed_namespaces  # anvil is a test node
    ready = bank.api.ops.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    (warning,) = ready.json["warnings"]
    assert warning.startswith("#0 ") and "unlocked accounts" in warning and "anvil_*" in warning
    metrics = bank.api.ops.get("/metrics").text
    assert f'wallet_chain_node_exposed{{node="{report.url_label}"}} 1.0' in metrics
    assert f'wallet_chain_node_exposure_unknown{{node="{report.url_label}"}} 0.0' in metrics
