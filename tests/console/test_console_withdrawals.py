"""The review queue, a withdrawal's page, the treasury and their actions over plain HTTP (no browser), on the
module's real service (MariaDB, Redis, anvil, the signer): filters and keyset pages, the destination warnings,
approve to broadcast, four eyes, reject with a reason, the pause, clearing needs_operator (console and API), and
every refusal (role, CSRF, state) changing nothing and logging nothing."""

from __future__ import annotations

import requests

from storage.models import PoolKey, Withdrawal, WithdrawalApproval
from storage.stafflog import StaffAction
from core import messages as m
from tests.console.support import ETH, FOUR_EYES_ABOVE, WITHDRAWAL_FEE, StaffClient
from storage.db import database_proxy
from tests.helpers import wait_until
from treasury import switches

OTHER = "0x1111111111111111111111111111111111111111"


def _actions(admin_id: int) -> list[tuple[str, str]]:
    return list(StaffAction.select(StaffAction.action, StaffAction.subject).where(StaffAction.admin_id == admin_id)
                .order_by(StaffAction.id).tuples())


def _status(withdrawal_id: int) -> str:
    return Withdrawal.get_by_id(withdrawal_id).status


def test_the_queue_filters_pages_by_keyset_and_warns_about_destinations(console):
    user = console.user(funds=10 * ETH)
    fresh = "0x" + "ab" * 20  # all lowercase as typed; stored and shown checksummed
    first = console.withdrawal(user, ETH, to=fresh)
    second = console.withdrawal(user, 2 * ETH, to=fresh)
    small = console.withdrawal(user, ETH // 100, to=fresh)
    client = StaffClient(console).logged_in(console.staff("auditor"))

    page = client.get("/withdrawals?asset=ETH&min=0.5&max=3")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    text = page.text
    assert f'id="withdrawal-{first}"' in text and f'id="withdrawal-{second}"' in text
    assert f'id="withdrawal-{small}"' not in text  # under the minimum of the filter
    assert "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB" in text and fresh not in text
    row_first = text.split(f'id="withdrawal-{first}"')[1].split("</tr>")[0]
    row_second = text.split(f'id="withdrawal-{second}"')[1].split("</tr>")[0]
    assert "first withdrawal to this address" in row_first and "first withdrawal" not in row_second
    assert "1 ETH" in row_first and "0.001 ETH fee" in row_first and user.username in row_first
    assert "3 withdrawal(s) in all" in row_first
    assert text.index(f"withdrawal-{first}") < text.index(f"withdrawal-{second}")  # oldest first

    assert "own deposit address?" not in text
    # A destination that is a key of ours (the shard refuses one at request time; a key generated since is not):
    ours = PoolKey.select().where(PoolKey.account_id.is_null()).first().address
    Withdrawal.update(to_address=ours).where(Withdrawal.id == small).execute()
    row_small = client.get("/withdrawals").text.split(f'id="withdrawal-{small}"')[1].split("</tr>")[0]
    assert "own deposit address?" in row_small and "first withdrawal to this address" in row_small

    after = client.get(f"/withdrawals?asset=ETH&after={first}").text  # the next page starts after the id
    assert f'id="withdrawal-{first}"' not in after and f'id="withdrawal-{second}"' in after
    for bad in ("status=nonsense", "min=1", "asset=DOGE", "asset=ETH&min=abc", "asset=ETH&min=-1",
                "after=12x", "asset=ETH&min=0.0000000000000000001"):
        answer = client.get(f"/withdrawals?{bad}")
        assert answer.status_code == 400, bad
    for withdrawal_id in (first, second, small):
        assert _status(withdrawal_id) == "reviewing"


def test_a_reviewer_approves_and_the_withdrawal_is_broadcast_with_its_attempt_and_history(console):
    console.fund_hot_wallet(5 * ETH)
    user = console.user(funds=2 * ETH)
    withdrawal_id = console.withdrawal(user, ETH // 2)
    reviewer = console.staff("reviewer")
    client = StaffClient(console).logged_in(reviewer)
    assert f'id="approve-{withdrawal_id}"' in client.get("/withdrawals").text
    answer = client.post(f"/withdrawals/{withdrawal_id}/approve", {"back": "queue"}, page="/withdrawals")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/withdrawals")
    wait_until(lambda: _status(withdrawal_id) == "broadcast", what="the signer broadcasting the approved withdrawal")
    assert console.balance(user.account_id) == (2 * ETH - ETH // 2 - WITHDRAWAL_FEE, ETH // 2 + WITHDRAWAL_FEE)

    page = client.get(f"/withdrawals/{withdrawal_id}").text
    row = Withdrawal.get_by_id(withdrawal_id)
    assert row.lane and row.nonce is not None
    assert 'id="attempts"' in page and f"#{row.nonce}" in page and "original" in page
    history = page.split('id="history"')[1]
    assert f"withdrawal.approve</td><td>{reviewer.name} (reviewer)" in history
    assert history.index("reviewing") < history.index("withdrawal.approve") < history.index("broadcast")
    assert f'id="approve-{withdrawal_id}"' not in page  # no longer reviewing: no action
    assert _actions(reviewer.id) == [("console.login", f"admin:{reviewer.id}"),
                                     ("withdrawal.approve", f"withdrawal:{withdrawal_id}")]


def test_four_eyes_shows_who_approved_first_and_refuses_the_same_reviewer_twice(console):
    user = console.user(funds=20 * ETH)
    big = console.withdrawal(user, FOUR_EYES_ABOVE + ETH, to=OTHER)
    rita, rob = console.staff("reviewer", "rita-" + str(big)), console.staff("reviewer", "rob-" + str(big))
    first = StaffClient(console).logged_in(rita)
    first.post(f"/withdrawals/{big}/approve", {}, page="/withdrawals")
    assert _status(big) == "reviewing"
    page = first.get(f"/withdrawals/{big}").text
    assert f"1 of 2: approved first by {rita.name}" in page and "You approved this" in page
    again = first.post(f"/withdrawals/{big}/approve", {}, page=f"/withdrawals/{big}")
    assert again.status_code == 302 and "already" in first.get(f"/withdrawals/{big}").text
    assert WithdrawalApproval.select().where(WithdrawalApproval.withdrawal_id == big).count() == 1

    second = StaffClient(console).logged_in(rob)
    assert f"approved first by {rita.name}" in second.get("/withdrawals").text
    second.post(f"/withdrawals/{big}/approve", {}, page="/withdrawals")
    assert _status(big) in ("approved", "signed", "broadcast")
    assert f"2 of 2: approved first by {rita.name}, then {rob.name}" in second.get(f"/withdrawals/{big}").text


def test_a_rejection_needs_a_reason_unfreezes_and_shows_the_reason_as_text(console):
    user = console.user(funds=3 * ETH)
    withdrawal_id = console.withdrawal(user, ETH, to=OTHER)
    reviewer = console.staff("reviewer")
    client = StaffClient(console).logged_in(reviewer)
    client.post(f"/withdrawals/{withdrawal_id}/reject", {"reason": ""}, page="/withdrawals")
    assert _status(withdrawal_id) == "reviewing"
    evil = "<script>alert(1)</script>"
    client.post(f"/withdrawals/{withdrawal_id}/reject", {"reason": f"looks like fraud {evil}"}, page="/withdrawals")
    assert _status(withdrawal_id) == "rejected"
    assert console.balance(user.account_id) == (3 * ETH, 0)
    page = client.get(f"/withdrawals/{withdrawal_id}").text
    assert evil not in page and "looks like fraud &lt;script&gt;alert(1)&lt;/script&gt;" in page
    late = client.post(f"/withdrawals/{withdrawal_id}/approve", {}, page="/withdrawals")
    assert late.status_code == 302 and "not reviewing" in client.get(f"/withdrawals/{withdrawal_id}").text
    assert [a for a, _ in _actions(reviewer.id)] == ["console.login", "withdrawal.reject"]


def test_roles_csrf_and_bearer_refusals_change_nothing(console):
    user = console.user(funds=3 * ETH)
    withdrawal_id = console.withdrawal(user, ETH, to=OTHER)
    before = StaffAction.select().count()
    operator = StaffClient(console).logged_in(console.staff("operator"))
    auditor = StaffClient(console).logged_in(console.staff("auditor"))
    reviewer = StaffClient(console).logged_in(console.staff("reviewer"))
    for client, path in ((operator, f"/withdrawals/{withdrawal_id}/approve"),
                         (auditor, f"/withdrawals/{withdrawal_id}/approve"),
                         (auditor, f"/withdrawals/{withdrawal_id}/reject"), (auditor, "/treasury/pause"),
                         (reviewer, "/treasury/pause"), (reviewer, f"/withdrawals/{withdrawal_id}/clear-flag")):
        answer = client.post(path, {"reason": "try"}, page="/withdrawals")
        assert answer.status_code == 403, path
    for csrf in (None, "wrong-token"):
        answer = reviewer.post(f"/withdrawals/{withdrawal_id}/approve", {}, csrf=csrf)
        assert answer.status_code == 400 and "refused" in answer.text
    token = requests.post(console.url + "/api/v1/sessions", json={"username": user.username,
                                                                  "password": "user password"}, timeout=30)
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    for path in ("/withdrawals", f"/withdrawals/{withdrawal_id}", "/treasury"):
        assert requests.get(console.admin_url + path, headers=bearer, timeout=30).status_code == 401
    assert _status(withdrawal_id) == "reviewing" and not switches.engaged(database_proxy.obj, switches.SIGNING_PAUSED)
    assert StaffAction.select().count() == before + 3  # the three logins


def test_an_operator_pauses_and_resumes_signing_from_the_treasury_page(console):
    console.fund_hot_wallet(2 * ETH)
    operator = console.staff("operator")
    client = StaffClient(console).logged_in(operator)
    page = client.get("/treasury").text
    assert 'id="signing-state"' in page and "running" in page and 'id="hot-address"' in page
    assert 'id="gas-ETH"' in page
    client.post("/treasury/pause", {"reason": "incident 42"}, page="/treasury")
    assert switches.engaged(database_proxy.obj, switches.SIGNING_PAUSED)
    client.post("/treasury/pause", {"reason": "again"}, page="/treasury")  # already paused: nothing logged

    user = console.user(funds=2 * ETH)
    withdrawal_id = console.withdrawal(user, ETH // 10, to=OTHER)
    StaffClient(console).logged_in(console.staff("reviewer")).post(
        f"/withdrawals/{withdrawal_id}/approve", {}, page="/withdrawals")
    assert console.system.router.ask_actor("signer", m.RunSigner(), timeout=60).paused
    assert _status(withdrawal_id) == "approved"  # nothing signed while paused
    assert "paused" in client.get("/treasury").text
    client.post("/treasury/resume", {}, page="/treasury")
    wait_until(lambda: _status(withdrawal_id) == "broadcast", what="signing after the resume")
    assert _actions(operator.id)[1:] == [("signing_paused.engage", "switch:signing_paused"),
                                         ("signing_paused.release", "switch:signing_paused")]


def test_an_operator_clears_needs_operator_once_from_the_page_and_through_the_api(console):
    user = console.user(funds=3 * ETH)
    withdrawal_id = console.withdrawal(user, ETH, to=OTHER)
    Withdrawal.update(needs_operator=True, operator_reason="nonce used by a transaction that is none of ours").where(
        Withdrawal.id == withdrawal_id).execute()  # what the signer's flag writes
    operator = console.staff("operator")
    client = StaffClient(console).logged_in(operator)
    page = client.get(f"/withdrawals/{withdrawal_id}").text
    assert 'id="needs-operator"' in page and "none of ours" in page and 'id="clear-flag"' in page
    flagged = client.get("/withdrawals?flagged=1").text
    assert f'id="withdrawal-{withdrawal_id}"' in flagged and flagged.count('<tr id="withdrawal-') == 1
    client.post(f"/withdrawals/{withdrawal_id}/clear-flag", {"reason": ""}, page="/withdrawals")
    assert Withdrawal.get_by_id(withdrawal_id).needs_operator
    client.post(f"/withdrawals/{withdrawal_id}/clear-flag", {"reason": "key rotated, checked"}, page="/withdrawals")
    row = Withdrawal.get_by_id(withdrawal_id)
    assert not row.needs_operator and row.operator_reason is None
    client.post(f"/withdrawals/{withdrawal_id}/clear-flag", {"reason": "twice"}, page="/withdrawals")
    assert "not flagged" in client.get(f"/withdrawals/{withdrawal_id}").text
    assert console.balance(user.account_id) == (2 * ETH - WITHDRAWAL_FEE, ETH + WITHDRAWAL_FEE)  # still frozen
    cleared = StaffAction.get((StaffAction.admin_id == operator.id) & (StaffAction.action == "withdrawal.clear_flag"))
    assert "key rotated, checked" in cleared.details and "none of ours" in cleared.details
    assert [a for a, _ in _actions(operator.id)] == ["console.login", "withdrawal.clear_flag"]

    Withdrawal.update(needs_operator=True, operator_reason="again").where(Withdrawal.id == withdrawal_id).execute()
    api = console._server.app.test_client()
    for role, status in (("reviewer", 403), ("operator", 200)):
        token = console.staff_token(role)
        answer = api.post(f"/admin/api/v1/withdrawals/{withdrawal_id}/clear-flag", json={"reason": "api"},
                          headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == status, answer.json
    assert not Withdrawal.get_by_id(withdrawal_id).needs_operator
