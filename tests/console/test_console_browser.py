"""The console in a real browser: Debian's chromium (installed by `make test`, scripts/browser.sh) driven by the
pinned playwright package through `executable_path` (no browser download), headless with a fresh profile.
Screenshots go to test-artifacts/console/ (not committed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from app.audit import run_audit
from core import messages as m
from core.limits import CONSOLE_IDLE_MS
from storage import walletkeys
from storage.models import Deposit, Withdrawal
from storage.stafflog import StaffAction
from tests.console.support import ARTIFACTS, FOUR_EYES_ABOVE, WITHDRAWAL_FEE, Console, Staff, csrf_of
from tests.helpers import wait_until
from tests.process.support import WALLET, wallet_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<script>alert(1)</script>"
DESTINATION = "0x000000000000000000000000000000000000bEEF"
ETH = 10**18


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    assert Path(CHROMIUM).exists(), "no /usr/bin/chromium: run `make browser` (Debian's chromium package)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        yield context
        context.close()


@pytest.fixture
def page(browser):
    browser.clear_cookies()
    tab = browser.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    tab.dialogs = dialogs
    yield tab
    assert dialogs == [], "a page ran script"
    tab.close()


def log_in(page, console: Console, staff: Staff, steps_ahead: int = 0) -> None:
    page.goto(console.admin_url + "/login")
    page.fill("input[name=name]", staff.name)
    page.fill("input[name=password]", staff.password)
    page.fill("input[name=code]", staff.code(console.clock, steps_ahead))
    page.click("form.login button")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def actions_of(staff: Staff) -> list[tuple[str, str]]:
    return list(StaffAction.select(StaffAction.action, StaffAction.subject).where(StaffAction.admin_id == staff.id)
                .order_by(StaffAction.id).tuples())


def status(withdrawal_id: int) -> str:
    return Withdrawal.get_by_id(withdrawal_id).status


def audit(console: Console) -> subprocess.CompletedProcess:
    return subprocess.run([WALLET, "audit"], env=wallet_env(console.config), capture_output=True, text=True,
                          timeout=120)


def test_an_operator_releases_a_hold_retries_a_credit_looks_up_an_account_and_sees_the_log_verified(console, page):
    held = console.user(funds=ETH)
    console.hold(held.account_id, "credited deposit reorged out")
    payee = console.user()
    deposit_id = console.failed_credit(payee, 3 * ETH)
    operator = console.staff("operator")

    log_in(page, console, operator)
    expect(page.locator("#who")).to_have_text(f"{operator.name} (operator)")
    expect(page.locator("#shards tbody tr")).to_have_count(console.config.shards)
    expect(page.locator("#nodes")).to_contain_text("#0")
    shot(page, "health")

    page.click("text=Holds")
    row = page.locator(f"#hold-{held.account_id}")
    row.locator("input[name=reason]").fill("checked with the chain: deposit is back")
    row.locator("button").click()
    expect(page.locator(".flash.info")).to_contain_text(f"Hold released on account {held.account_id}")
    expect(page.locator("#hold-state")).to_have_text("not on hold")
    assert not console.on_hold(held.account_id)
    shot(page, "hold-released")

    page.click("text=Flagged deposits")
    row = page.locator(f"#deposit-{deposit_id}")
    expect(row).to_contain_text("credit_failed")
    expect(row).to_contain_text("3 ETH")
    shot(page, "flagged-deposits")
    row.locator("input[name=reason]").fill("ETH credit refused by a shard bug, fixed")
    row.locator("button").click()
    expect(page.locator(".flash.info")).to_contain_text(f"Deposit {deposit_id} is pending again")
    wait_until(lambda: Deposit.get_by_id(deposit_id).status == "confirmed", what="BlockWatch crediting the deposit")
    assert console.balance(payee.account_id) == (3 * ETH, 0)

    page.click("text=Accounts")
    page.fill("input[name=q]", payee.deposit_address.lower())
    page.click("form.lookup button")
    expect(page.locator("#account-username")).to_have_text(payee.username)
    expect(page.locator("#balances")).to_contain_text("3 ETH")
    expect(page.locator("#account-deposits")).to_contain_text("confirmed")
    shot(page, "account")

    page.click("text=Staff log")
    expect(page.locator("#chain-verified")).to_be_visible()
    expect(page.locator("#staff-log")).to_contain_text("deposit.retry_credit")
    shot(page, "staff-log")
    page.click("text=Log out")
    expect(page.locator("form.login")).to_be_visible()

    assert actions_of(operator) == [("console.login", f"admin:{operator.id}"),
                                    ("account.release_hold", f"account:{held.account_id}"),
                                    ("deposit.retry_credit", f"deposit:{deposit_id}"),
                                    ("console.logout", f"admin:{operator.id}")]
    assert run_audit().ok

    release = StaffAction.get((StaffAction.admin_id == operator.id) & (StaffAction.action == "account.release_hold"))
    StaffAction.update(details=release.details.replace("checked", "ignored")).where(
        StaffAction.id == release.id).execute()
    try:
        tampered = audit(console)
        assert tampered.returncode == 1 and f"staff log: row {release.id}" in tampered.stderr
        log_in(page, console, operator, steps_ahead=1)
        page.click("text=Staff log")
        expect(page.locator("#chain-broken")).to_contain_text(f"row {release.id}")
        shot(page, "staff-log-tampered")
    finally:
        StaffAction.update(details=release.details).where(StaffAction.id == release.id).execute()
    assert run_audit().ok


def test_wrong_and_replayed_codes_are_refused_and_an_idle_session_ends(console, page):
    staff = console.staff("auditor")
    good = staff.code(console.clock)
    page.goto(console.admin_url + "/login")
    page.fill("input[name=name]", staff.name)
    page.fill("input[name=password]", staff.password)
    page.fill("input[name=code]", "000000" if good != "000000" else "111111")
    page.click("form.login button")
    expect(page.locator("#refused")).to_be_visible()
    log_in(page, console, staff)
    expect(page.locator("#who")).to_be_visible()
    page.click("text=Log out")
    log_in(page, console, staff)  # the same code, replayed
    expect(page.locator("#refused")).to_be_visible()
    shot(page, "login-refused")

    log_in(page, console, staff, steps_ahead=1)
    expect(page.locator("#who")).to_be_visible()
    console.clock.advance(CONSOLE_IDLE_MS + 1)
    page.reload()
    expect(page.locator("#expired")).to_be_visible()
    expect(page.locator("#who")).to_have_count(0)


def test_a_form_without_or_with_a_forged_csrf_token_is_refused_and_changes_nothing(console, page):
    user = console.user()
    console.hold(user.account_id, "reorged")
    staff = console.staff("operator")
    log_in(page, console, staff)
    before = StaffAction.select().count()
    for tamper in ("e => e.value = 'forged'", "e => e.remove()"):
        page.goto(f"{console.admin_url}/accounts/{user.account_id}")
        form = page.locator("#release-hold")
        form.locator("input[name=csrf_token]").evaluate(tamper)
        form.locator("input[name=reason]").fill("should not happen")
        form.locator("button").click()
        expect(page.locator("#error-detail")).to_contain_text("The form was refused")
        assert console.on_hold(user.account_id)
    shot(page, "csrf-refused")
    assert StaffAction.select().count() == before


@pytest.mark.parametrize("role", ["reviewer", "auditor"])
def test_a_reviewer_or_an_auditor_sees_no_operator_action_and_posting_one_is_refused(console, page, role):
    user = console.user()
    console.hold(user.account_id, "reorged")
    deposit_id = console.failed_credit(user, 5)
    staff = console.staff(role)
    log_in(page, console, staff)
    page.goto(f"{console.admin_url}/accounts/{user.account_id}")
    expect(page.locator("#release-hold")).to_have_count(0)
    token = csrf_of(page.content())
    for path in (f"/accounts/{user.account_id}/release-hold", f"/deposits/{deposit_id}/retry-credit"):
        answer = page.request.post(console.admin_url + path, form={"csrf_token": token, "reason": "try"},
                                   max_redirects=0)
        assert answer.status == 403 and f"A {role} may not do this" in answer.text()
    assert console.on_hold(user.account_id) and Deposit.get_by_id(deposit_id).status == "credit_failed"
    assert [action for action, _ in actions_of(staff)] == ["console.login"]


def test_a_user_bearer_token_is_refused_and_every_page_is_locked_down(console, page, browser):
    user = console.user()
    answer = page.request.post(console.url + "/api/v1/sessions",
                               data={"username": user.username, "password": "user password"})
    token = answer.json()["token"]
    page.set_extra_http_headers({"Authorization": f"Bearer {token}"})
    response = page.goto(console.admin_url + "/health")
    assert response.status == 401
    expect(page.locator("#error-detail")).to_contain_text("does not accept bearer tokens")
    page.set_extra_http_headers({})

    response = page.goto(console.admin_url + "/login")
    headers = response.headers
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store" and "default-src 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # so no script at all, inline or not
    assert page.locator("script").count() == 0


def test_user_controlled_text_renders_as_text(console, page):
    user = console.user(f"u{EVIL}")
    console.hold(user.account_id, f"reason {EVIL}")
    staff = console.staff("operator")
    log_in(page, console, staff)
    page.goto(console.admin_url + "/holds")
    expect(page.locator(f"#hold-{user.account_id}")).to_contain_text(f"u{EVIL}")
    expect(page.locator(f"#hold-{user.account_id} .reason")).to_have_text(f"reason {EVIL}")
    page.goto(f"{console.admin_url}/accounts/{user.account_id}")
    expect(page.locator("#account-username")).to_have_text(f"u{EVIL}")
    page.locator("#release-hold input[name=reason]").fill(f"released {EVIL}")
    page.locator("#release-hold button").click()
    expect(page.locator("#account-actions")).to_contain_text(f"released {EVIL}")
    page.goto(console.admin_url + "/accounts?q=" + EVIL)
    expect(page.locator("#not-found")).to_contain_text(EVIL)
    shot(page, "escaped")
    assert page.locator("script").count() == 0  # and the page fixture saw no alert


def test_reviewers_approve_reject_and_four_eyes_while_an_operator_pauses_and_resumes(console, page):
    """The review desk end to end: a pause engaged first, one withdrawal approved, one rejected with a reason,
    one over the four-eyes threshold approved by two reviewers; nothing is signed until the resume, then both
    approved ones reach `broadcast`. Every action is in the staff log once, in order."""
    console.fund_hot_wallet(20 * ETH)
    user = console.user(funds=20 * ETH)
    small = console.withdrawal(user, ETH, to=DESTINATION)
    refused = console.withdrawal(user, ETH // 2, to=DESTINATION)
    big = console.withdrawal(user, FOUR_EYES_ABOVE + ETH, to=DESTINATION)
    operator, rita, rob = console.staff("operator"), console.staff("reviewer"), console.staff("reviewer")

    log_in(page, console, operator)
    page.click("text=Treasury")
    expect(page.locator("#signing-state")).to_have_text("running")
    expect(page.locator("#hot-address")).to_have_text(walletkeys.wallet_address("hot"))
    page.locator("#pause input[name=reason]").fill("incident drill")
    page.locator("#pause button").click()
    expect(page.locator("#signing-state")).to_have_text("paused")
    page.click("text=Log out")

    log_in(page, console, rita)
    page.click("text=Review queue")
    row = page.locator(f"#withdrawal-{small}")
    expect(row).to_contain_text("1 ETH")
    expect(row.locator(".destination")).to_have_text(DESTINATION)
    expect(page.locator(f"#withdrawal-{small} .first-address")).to_be_visible()
    expect(page.locator(f"#withdrawal-{refused} .first-address")).to_have_count(0)
    shot(page, "queue")
    row.locator("form.approve button").click()
    expect(page.locator(".flash.info")).to_contain_text(f"Withdrawal {small} approved: now approved")
    page.locator(f"#reject-{refused} input[name=reason]").fill(f"destination on a sanctions list {EVIL}")
    page.locator(f"#reject-{refused} button").click()
    expect(page.locator(".flash.info")).to_contain_text(f"Withdrawal {refused} rejected")
    page.locator(f"#approve-{big} button").click()
    expect(page.locator(".flash.info")).to_contain_text("waits for a second reviewer")
    page.click(f"#withdrawal-{big} a >> text={big}")
    expect(page.locator(f"#approvals-{big}")).to_have_text(f"1 of 2: approved first by {rita.name}")
    expect(page.locator(f"#approve-{big}")).to_have_count(0)  # not twice by the same reviewer
    page.click("text=Log out")

    log_in(page, console, rob)
    page.goto(f"{console.admin_url}/withdrawals/{big}")
    expect(page.locator(f"#approvals-{big}")).to_contain_text(f"approved first by {rita.name}")
    page.locator(f"#approve-{big} button").click()
    expect(page.locator(f"#approvals-{big}")).to_have_text(f"2 of 2: approved first by {rita.name}, then {rob.name}")
    page.goto(f"{console.admin_url}/withdrawals/{refused}")
    expect(page.locator("#withdrawal-status")).to_have_text("rejected")
    expect(page.locator("#reject-reason")).to_have_text(f"destination on a sanctions list {EVIL}")
    page.click("text=Log out")

    assert console.system.router.ask_actor("signer", m.RunSigner(), timeout=60).paused
    assert (status(small), status(big)) == ("approved", "approved")  # nothing signed while paused
    log_in(page, console, operator, steps_ahead=1)
    page.click("text=Treasury")
    page.locator("#resume button").click()
    expect(page.locator("#signing-state")).to_have_text("running")
    wait_until(lambda: status(small) == status(big) == "broadcast", what="the signer broadcasting after the resume")
    page.goto(f"{console.admin_url}/withdrawals/{small}")
    expect(page.locator("#withdrawal-status")).to_have_text("broadcast")
    expect(page.locator("#attempts tbody tr")).to_have_count(1)
    expect(page.locator("#attempts")).to_contain_text("original")
    expect(page.locator("#history")).to_contain_text(f"{rita.name} (reviewer)")
    shot(page, "withdrawal")
    page.click("text=Log out")
    assert console.balance(user.account_id)[0] == 20 * ETH - ETH - FOUR_EYES_ABOVE - ETH - 2 * WITHDRAWAL_FEE

    staff_ids = (operator.id, rita.id, rob.id)
    log = list(StaffAction.select(StaffAction.admin_name, StaffAction.action, StaffAction.subject)
               .where(StaffAction.admin_id.in_(staff_ids)).order_by(StaffAction.id).tuples())
    assert log == [
        (operator.name, "console.login", f"admin:{operator.id}"),
        (operator.name, "signing_paused.engage", "switch:signing_paused"),
        (operator.name, "console.logout", f"admin:{operator.id}"),
        (rita.name, "console.login", f"admin:{rita.id}"),
        (rita.name, "withdrawal.approve", f"withdrawal:{small}"),
        (rita.name, "withdrawal.reject", f"withdrawal:{refused}"),
        (rita.name, "withdrawal.approve", f"withdrawal:{big}"),
        (rita.name, "console.logout", f"admin:{rita.id}"),
        (rob.name, "console.login", f"admin:{rob.id}"),
        (rob.name, "withdrawal.approve", f"withdrawal:{big}"),
        (rob.name, "console.logout", f"admin:{rob.id}"),
        (operator.name, "console.login", f"admin:{operator.id}"),
        (operator.name, "signing_paused.release", "switch:signing_paused"),
        (operator.name, "console.logout", f"admin:{operator.id}"),
    ]
    assert run_audit().ok


def test_a_reviewer_cannot_pause_and_an_auditor_cannot_approve_in_the_browser(console, page):
    user = console.user(funds=2 * ETH)
    withdrawal_id = console.withdrawal(user, ETH, to=DESTINATION)
    for role, path in (("reviewer", "/treasury/pause"), ("auditor", f"/withdrawals/{withdrawal_id}/approve")):
        staff = console.staff(role)
        log_in(page, console, staff)
        page.goto(console.admin_url + "/treasury")
        expect(page.locator("#pause")).to_have_count(0)
        page.goto(f"{console.admin_url}/withdrawals/{withdrawal_id}")
        expect(page.locator(f"#approve-{withdrawal_id}")).to_have_count(0 if role == "auditor" else 1)
        token = csrf_of(page.content())
        answer = page.request.post(console.admin_url + path, form={"csrf_token": token}, max_redirects=0)
        assert answer.status == 403 and f"A {role} may not do this" in answer.text()
        assert [action for action, _ in actions_of(staff)] == ["console.login"]
        page.click("text=Log out")
    assert status(withdrawal_id) == "reviewing"
