"""Withdrawals end to end through HTTP on real anvil, MariaDB and Redis: request → review → sign → broadcast →
confirmed at exactly N confirmations; the recipient's on-chain balance grows by exactly the amount, the user's
balance falls by amount + fee; a rejection and a cancel unfreeze exactly."""

from __future__ import annotations

from app.audit import run_audit
from storage import stafflog
from storage.models import TxAttempt, Withdrawal
from tests.withdrawals.support import ETH, N, RECIPIENT, TOKEN


def assert_audit_ok():
    report = run_audit()
    assert report.ok, report.violations


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
