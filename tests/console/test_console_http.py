"""The console over plain HTTP (no browser): login with password + TOTP, lockout, replayed codes, idle expiry,
CSRF and role refusals that change nothing, bearer tokens refused, security headers, escaping."""

from __future__ import annotations

import requests

from core.limits import CONSOLE_IDLE_MS, CONSOLE_LOCKOUT_MS, CONSOLE_LOGIN_FAILURES_MAX, CONSOLE_REASON_MAX_LEN
from storage.models import AdminUser, Deposit
from storage.stafflog import StaffAction
from tests.console.support import StaffClient, csrf_of

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _actions(admin_id: int) -> list[str]:
    return [a for (a,) in StaffAction.select(StaffAction.action).where(StaffAction.admin_id == admin_id)
            .order_by(StaffAction.id).tuples()]


def test_login_needs_the_password_and_a_fresh_code_and_sets_a_strict_cookie(console):
    staff = console.staff("operator")
    client = StaffClient(console)
    assert client.get("/health").status_code == 302  # not logged in: to the login page

    wrong_code = client.login(staff, code="000000" if staff.code(console.clock) != "000000" else "111111")
    assert wrong_code.status_code == 401 and "Login refused" in wrong_code.text
    wrong_password = client.login(staff, password="not the password")
    assert wrong_password.status_code == 401

    answer = client.login(staff)
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/health")
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure
    assert client.get("/health").status_code == 200

    replay = StaffClient(console).login(staff)  # the same code again, from another browser
    assert replay.status_code == 401
    assert StaffClient(console).login(staff, staff.code(console.clock, steps_ahead=1)).status_code == 302
    assert _actions(staff.id) == ["console.login", "console.login"]


def test_repeated_failures_lock_the_staff_member_out(console):
    staff = console.staff("reviewer")
    client = StaffClient(console)
    for _ in range(CONSOLE_LOGIN_FAILURES_MAX):
        assert client.login(staff, password="wrong password!").status_code == 401
    assert client.login(staff).status_code == 401  # the right password and code, but locked
    assert AdminUser.get_by_id(staff.id).locked_until_ms > console.clock()
    console.clock.advance(CONSOLE_LOCKOUT_MS + 1)
    assert client.login(staff, staff.code(console.clock)).status_code == 302
    lockouts = StaffAction.select().where((StaffAction.action == "console.lockout")
                                          & (StaffAction.subject == f"admin:{staff.id}"))
    assert lockouts.count() == 1


def test_an_idle_session_expires_and_its_forms_change_nothing(console):
    staff = console.staff("operator")
    user = console.user()
    console.hold(user.account_id, "reorged")
    client = StaffClient(console).logged_in(staff)
    token = csrf_of(client.get(f"/accounts/{user.account_id}").text)
    console.clock.advance(CONSOLE_IDLE_MS + 1)
    page = client.get("/health")
    assert page.status_code == 302 and "expired=1" in page.headers["Location"]
    refused = client.post(f"/accounts/{user.account_id}/release-hold", {"reason": "late"}, csrf=token)
    assert refused.status_code == 302 and "/admin/login" in refused.headers["Location"]
    assert console.on_hold(user.account_id)
    login_page = client.get(page.headers["Location"].split("/admin", 1)[1])
    assert "session has ended" in login_page.text


def test_forms_without_or_with_a_wrong_csrf_token_are_refused_and_change_nothing(console):
    staff = console.staff("operator")
    user = console.user()
    console.hold(user.account_id, "reorged")
    client = StaffClient(console).logged_in(staff)
    before = StaffAction.select().count()
    for csrf in (None, "wrong-token", csrf_of(StaffClient(console).get("/login").text)):  # last: another session's
        answer = client.post(f"/accounts/{user.account_id}/release-hold", {"reason": "no"}, csrf=csrf)
        assert answer.status_code == 400 and "refused" in answer.text
        assert console.on_hold(user.account_id)
    assert StaffAction.select().count() == before


def test_roles_a_reviewer_cannot_release_a_hold_and_an_auditor_changes_nothing(console):
    user = console.user()
    console.hold(user.account_id, "reorged")
    deposit_id = console.failed_credit(user, 5)
    before = StaffAction.select().count()
    for role in ("reviewer", "auditor"):
        client = StaffClient(console).logged_in(console.staff(role))
        page = client.get(f"/accounts/{user.account_id}")
        assert page.status_code == 200 and "Release hold" not in page.text
        for path in (f"/accounts/{user.account_id}/release-hold", f"/deposits/{deposit_id}/retry-credit"):
            answer = client.post(path, {"reason": "try"}, page=f"/accounts/{user.account_id}")
            assert answer.status_code == 403 and f"A {role} may not do this" in answer.text
    assert console.on_hold(user.account_id)
    assert StaffAction.select().count() == before + 2  # the two logins, nothing else


def test_a_bearer_token_is_refused_on_the_console(console):
    user = console.user()
    token = requests.post(console.url + "/api/v1/sessions", json={"username": user.username,
                                                                  "password": "user password"}, timeout=30)
    assert token.status_code == 200
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    for path in ("/health", f"/accounts/{user.account_id}", "/staff-log", "/login"):
        answer = requests.get(console.admin_url + path, headers=bearer, timeout=30, allow_redirects=False)
        assert answer.status_code == 401 and "bearer tokens" in answer.text, path
    staff_client = StaffClient(console).logged_in(console.staff("auditor"))
    with_cookie = staff_client.get("/health", headers=bearer)  # not even beside a staff session
    assert with_cookie.status_code == 401


def test_every_response_carries_the_security_headers(console):
    client = StaffClient(console).logged_in(console.staff("auditor"))
    for path, cache in (("/login", "no-store"), ("/health", "no-store"), ("/staff-log", "no-store"),
                        ("/withdrawals", "no-store"), ("/treasury", "no-store"),
                        ("/deposits", "no-store"), ("/no-such-page", None), ("/static/console.css", "private")):
        answer = client.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (path, name)
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy and "frame-ancestors 'none'" in policy
        if cache:
            assert answer.headers["Cache-Control"].startswith(cache), path


def test_user_controlled_text_is_escaped(console):
    evil = "<script>alert(1)</script>"
    user = console.user(f"x{evil}", funds=10**18)
    withdrawal_id = console.withdrawal(user, 10**17)
    console.hold(user.account_id, f"reason {evil}")
    client = StaffClient(console).logged_in(console.staff("auditor"))
    for path in (f"/accounts/{user.account_id}", "/holds", f"/accounts?q=nobody{evil}",
                 f"/withdrawals?after={withdrawal_id - 1}", f"/withdrawals/{withdrawal_id}"):
        text = client.get(path).text
        assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path


def test_an_action_on_a_subject_in_another_state_changes_nothing_and_logs_nothing(console):
    """The owning actor's conditional UPDATE: a hold already released, a deposit no longer credit_failed."""
    staff = console.staff("operator")
    user = console.user()
    deposit_id = console.failed_credit(user, 7)
    Deposit.update(status="confirmed").where(Deposit.id == deposit_id).execute()  # moved meanwhile
    client = StaffClient(console).logged_in(staff)
    released = client.post(f"/accounts/{user.account_id}/release-hold", {"reason": "twice"})
    assert released.status_code == 302
    assert "is not on hold" in client.get(f"/accounts/{user.account_id}").text
    retried = client.post(f"/deposits/{deposit_id}/retry-credit", {"reason": "again"})
    assert retried.status_code == 302
    assert "is confirmed, not credit_failed" in client.get("/deposits").text
    assert _actions(staff.id) == ["console.login"]


def test_an_over_long_or_empty_reason_is_refused(console):
    staff = console.staff("operator")
    user = console.user()
    console.hold(user.account_id, "reorged")
    client = StaffClient(console).logged_in(staff)
    for reason in ("", "x" * (CONSOLE_REASON_MAX_LEN + 1)):
        client.post(f"/accounts/{user.account_id}/release-hold", {"reason": reason})
        assert console.on_hold(user.account_id)
    assert _actions(staff.id) == ["console.login"]


def test_the_session_cookie_is_secure_over_tls(console):
    client = console._server.app.test_client()
    answer = client.get("/admin/login", base_url="https://console.example")
    cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_session_in_use_outlives_the_idle_time_and_page_views_write_its_row_only_now_and_then(console):
    from core.limits import CONSOLE_SESSION_TOUCH_MS
    from storage.admins import AdminSession

    staff = console.staff("auditor")
    client = StaffClient(console).logged_in(staff)
    assert client.get("/health").status_code == 200  # the first page keeps a CSRF token: the session changes
    row = AdminSession.get(AdminSession.admin_id == staff.id)
    console.clock.advance(CONSOLE_SESSION_TOUCH_MS - 1)
    assert client.get("/health").status_code == 200
    assert AdminSession.get_by_id(row.token_hash).last_seen_ms == row.last_seen_ms  # a read only
    for _ in range(3):  # 1.5 idle times in all, never idle for one
        console.clock.advance(CONSOLE_IDLE_MS // 2)
        assert client.get("/health").status_code == 200
    assert AdminSession.get_by_id(row.token_hash).last_seen_ms == console.clock()
    console.clock.advance(CONSOLE_IDLE_MS + 1)
    assert client.get("/health").status_code == 302
