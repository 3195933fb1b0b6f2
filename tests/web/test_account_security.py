"""Account security over HTTP: password and pay-password changes, sessions listed and revoked, recovery codes
(once each, limited, revoking every session), and the TOTP second factor of withdrawals."""

from __future__ import annotations

import pyotp
import pytest

from core import messages as m
from storage.models import now_ms
from tests.web.conftest import PASSWORD, PAY_PASSWORD
from web.errors import TotpRequired, WrongTotpCode
from web.models import RecoveryCode
from web.security import Session
from web.totp import STEP_S, require_withdrawal_totp


def register(api, username="alice", password="alice password", pay_password="alice-pay"):
    response = api.client.post("/api/v1/accounts", json={"username": username, "password": password,
                                                         "pay_password": pay_password})
    assert response.status_code == 201, response.json
    return response.json


def login(api, username, password):
    return api.client.post("/api/v1/sessions", json={"username": username, "password": password})


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_recovery_code_works_once_and_revokes_every_session(any_api):
    account = register(any_api)
    codes = account["recovery_codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    assert RecoveryCode.select().count() == 10 and all(c not in r.code_hash for r in RecoveryCode.select()
                                                      for c in codes)
    tokens = [login(any_api, "alice", "alice password").json["token"] for _ in range(2)]
    reset = any_api.client.post("/api/v1/password-resets", json={
        "username": "alice", "recovery_code": codes[3].upper(), "new_password": "a brand new password"})
    assert reset.status_code == 200 and reset.json == {"recovery_codes_left": 9}
    for token in tokens:
        assert any_api.client.get("/api/v1/me", headers=auth(token)).json["code"] == "invalid_token"
    assert login(any_api, "alice", "alice password").status_code == 401
    assert login(any_api, "alice", "a brand new password").status_code == 200
    again = any_api.client.post("/api/v1/password-resets", json={
        "username": "alice", "recovery_code": codes[3], "new_password": "yet another password"})
    assert (again.status_code, again.json["code"]) == (401, "invalid_recovery_code")
    assert login(any_api, "alice", "a brand new password").status_code == 200


def test_wrong_recovery_codes_are_limited(any_api):
    account = register(any_api)
    for n in range(5):
        wrong = any_api.client.post("/api/v1/password-resets", json={
            "username": "alice", "recovery_code": f"wrong-{n}", "new_password": "a brand new password"})
        assert wrong.status_code == 401
    limited = any_api.client.post("/api/v1/password-resets", json={
        "username": "alice", "recovery_code": account["recovery_codes"][0], "new_password": "a brand new password"})
    assert (limited.status_code, limited.json["code"]) == (429, "rate_limited") and "Retry-After" in limited.headers
    assert login(any_api, "alice", "alice password").status_code == 200  # nothing changed
    unknown = any_api.client.post("/api/v1/password-resets", json={
        "username": "nobody", "recovery_code": account["recovery_codes"][0], "new_password": "a brand new password"})
    assert unknown.status_code == 401 and RecoveryCode.select().where(RecoveryCode.used_at.is_null()).count() == 10


def test_a_password_change_needs_the_current_one_and_revokes_the_other_sessions(any_api):
    alice = any_api.user("alice")
    other = any_api.login("alice")
    wrong = any_api.client.post("/api/v1/me/password", headers=alice.auth,
                                json={"current_password": "not it", "new_password": "a brand new password"})
    assert (wrong.status_code, wrong.json["code"]) == (403, "wrong_password")
    assert any_api.client.get("/api/v1/me", headers=auth(other)).status_code == 200
    changed = any_api.client.post("/api/v1/me/password", headers=alice.auth,
                                  json={"current_password": PASSWORD, "new_password": "a brand new password"})
    assert changed.status_code == 204
    assert any_api.client.get("/api/v1/me", headers=alice.auth).status_code == 200  # this one stays
    assert any_api.client.get("/api/v1/me", headers=auth(other)).json["code"] == "invalid_token"
    assert login(any_api, "alice", PASSWORD).status_code == 401
    assert login(any_api, "alice", "a brand new password").status_code == 200


def test_wrong_current_passwords_are_limited(any_api):
    alice = any_api.user("alice")
    for _ in range(5):
        any_api.client.post("/api/v1/me/password", headers=alice.auth,
                            json={"current_password": "not it", "new_password": "a brand new password"})
    limited = any_api.client.post("/api/v1/me/password", headers=alice.auth,
                                  json={"current_password": PASSWORD, "new_password": "a brand new password"})
    assert (limited.status_code, limited.json["code"]) == (429, "rate_limited")
    assert login(any_api, "alice", PASSWORD).status_code == 200


def test_a_pay_password_change_forgets_the_old_one_in_every_session(any_api):
    alice = any_api.user("alice", funds=100)
    any_api.user("bob")
    second = any_api.login("alice")
    assert any_api.transfer(alice, "bob", "1").status_code == 201  # the old pay password is memoised now
    changed = any_api.client.post("/api/v1/me/pay-password", headers={"Authorization": f"Bearer {second}"},
                                  json={"current_pay_password": PAY_PASSWORD, "new_pay_password": "new-pay-987"})
    assert changed.status_code == 204
    old = any_api.transfer(alice, "bob", "1")
    assert (old.status_code, old.json["code"]) == (403, "wrong_pay_password")
    assert any_api.transfer(alice, "bob", "1", pay_password="new-pay-987").status_code == 201
    wrong = any_api.client.post("/api/v1/me/pay-password", headers=alice.auth,
                                json={"current_pay_password": "not-the-one", "new_pay_password": "new-pay-000"})
    assert (wrong.status_code, wrong.json["code"]) == (403, "wrong_pay_password")


def test_sessions_are_listed_and_one_can_be_revoked(any_api):
    alice = any_api.user("alice")
    other = any_api.login("alice")
    bob = any_api.user("bob")
    listed = any_api.client.get("/api/v1/sessions", headers=alice.auth).json["sessions"]
    assert len(listed) == 2 and [s["current"] for s in listed].count(True) == 1
    target = next(s["id"] for s in listed if not s["current"])
    assert any_api.client.delete(f"/api/v1/sessions/{target}", headers=bob.auth).status_code == 404  # not bob's
    assert any_api.client.delete(f"/api/v1/sessions/{target}", headers=alice.auth).status_code == 204
    assert any_api.client.get("/api/v1/me", headers=auth(other)).json["code"] == "invalid_token"
    assert len(any_api.client.get("/api/v1/sessions", headers=alice.auth).json["sessions"]) == 1
    assert any_api.client.delete("/api/v1/sessions/zz", headers=alice.auth).status_code == 404


def code_at(secret: str, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret, interval=STEP_S).generate_otp(now_ms() // 1000 // STEP_S + offset_steps)


def check(api, account_id: int, code: str | None) -> None:
    with api.app.test_request_context("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        require_withdrawal_totp(Session("x" * 64, account_id, 0), code, answered_before=lambda: False)


def test_totp_enrolment_then_every_withdrawal_needs_a_fresh_code(any_api):
    alice = any_api.user("alice")
    check(any_api, alice.account_id, None)  # not enrolled: no code needed
    wrong_pay = any_api.client.post("/api/v1/me/totp", headers=alice.auth, json={"pay_password": "not-the-pay"})
    assert wrong_pay.status_code == 403
    enrolled = any_api.client.post("/api/v1/me/totp", headers=alice.auth, json={"pay_password": PAY_PASSWORD})
    assert enrolled.status_code == 201 and enrolled.json["otpauth_uri"].startswith("otpauth://totp/")
    secret = enrolled.json["secret"]
    check(any_api, alice.account_id, None)  # not confirmed yet: still off
    bad = any_api.client.post("/api/v1/me/totp/confirm", headers=alice.auth, json={"code": "000000"
                              if code_at(secret) != "000000" else "111111"})
    assert (bad.status_code, bad.json["code"]) == (403, "wrong_totp_code")
    assert any_api.client.post("/api/v1/me/totp/confirm", headers=alice.auth,
                               json={"code": code_at(secret)}).status_code == 204
    again = any_api.client.post("/api/v1/me/totp", headers=alice.auth, json={"pay_password": PAY_PASSWORD})
    assert (again.status_code, again.json["code"]) == (409, "totp_already_enabled")

    with pytest.raises(TotpRequired):
        check(any_api, alice.account_id, None)
    with pytest.raises(WrongTotpCode):
        check(any_api, alice.account_id, code_at(secret))  # the step used to confirm: not twice
    check(any_api, alice.account_id, code_at(secret, 1))  # one step of drift is tolerated
    with pytest.raises(WrongTotpCode):
        check(any_api, alice.account_id, code_at(secret, 1))  # replayed
    for _ in range(4):  # five wrong codes since the last right one: then even a right one is refused
        with pytest.raises(WrongTotpCode):
            check(any_api, alice.account_id, "123456" if code_at(secret) != "123456" else "654321")
    from web.errors import RateLimited
    with pytest.raises(RateLimited):
        check(any_api, alice.account_id, code_at(secret))


def test_totp_can_be_disabled_with_a_code(any_api):
    alice = any_api.user("alice")
    secret = any_api.client.post("/api/v1/me/totp", headers=alice.auth, json={"pay_password": PAY_PASSWORD}).json[
        "secret"]
    assert any_api.client.post("/api/v1/me/totp/confirm", headers=alice.auth,
                               json={"code": code_at(secret, -1)}).status_code == 204
    assert any_api.client.post("/api/v1/me/totp/disable", headers=alice.auth,
                               json={"code": code_at(secret)}).status_code == 204
    check(any_api, alice.account_id, None)


def test_the_allocator_writes_new_credentials_of_user_accounts_only(any_api):
    from core.errors import ValidationError
    with pytest.raises(ValidationError):
        any_api.system.router.ask_actor("allocator", m.UpdateCredentials(10**9, password_hash="x"))
