"""Failed logins and wrong pay passwords are limited per account and per client IP: 429 + Retry-After,
refused before any password is checked (so a correct one does not get through either). Registrations
are limited per client IP, and a taken username is refused before any hashing."""

from __future__ import annotations

from storage.models import Account
from tests.web.conftest import PASSWORD, PAY_PASSWORD, ledger_snapshot
from web import accounts
from web.security import hash_secret


def login(api, username: str, password: str, ip: str = "10.0.0.1"):
    return api.client.post("/api/v1/sessions", json={"username": username, "password": password},
                           environ_base={"REMOTE_ADDR": ip})


def assert_limited(response) -> None:
    assert response.status_code == 429 and response.json["code"] == "rate_limited", response.json
    assert 1 <= int(response.headers["Retry-After"]) <= 900


def test_login_failures_per_account(any_api):
    any_api.user("alice", login=False)
    any_api.user("bob", login=False)
    limit = any_api.front.limits.login_account.max_failures
    for n in range(limit):
        ip = f"10.0.1.{n}"  # a different address each time: only the account counter can trip
        assert login(any_api, "alice", "wrong password", ip).json["code"] == "invalid_credentials"
    assert_limited(login(any_api, "alice", PASSWORD, "10.0.2.1"))  # even the right password, from anywhere
    assert login(any_api, "bob", PASSWORD, "10.0.2.1").status_code == 200  # other accounts are untouched


def test_login_failures_per_ip(api):
    api.user("alice", login=False)
    limit = api.front.limits.login_ip.max_failures
    for n in range(limit):
        username = f"guess{n}"  # a different account each time: only the address counter can trip
        assert login(api, username, "wrong password", "10.9.9.9").json["code"] == "invalid_credentials"
    assert_limited(login(api, "alice", PASSWORD, "10.9.9.9"))
    assert login(api, "alice", PASSWORD, "10.9.9.8").status_code == 200


def test_a_successful_login_resets_the_account_counter(any_api):
    any_api.user("alice", login=False)
    limit = any_api.front.limits.login_account.max_failures
    for _ in range(2):
        for _ in range(limit - 1):
            assert login(any_api, "alice", "wrong password").status_code == 401
        assert login(any_api, "alice", PASSWORD).status_code == 200


def test_wrong_pay_passwords_per_account_and_per_ip(any_api):
    alice = any_api.user("alice", funds=1_000)
    any_api.user("bob", login=False)
    limit = any_api.front.limits.pay_account.max_failures
    before = ledger_snapshot(), any_api.balance(alice)
    for n in range(limit):
        wrong = any_api.transfer(alice, "bob", "1", pay_password="wrong-pay",
                                 environ_base={"REMOTE_ADDR": f"10.1.0.{n}"})
        assert wrong.status_code == 403 and wrong.json["code"] == "wrong_pay_password"
    assert_limited(any_api.transfer(alice, "bob", "1", environ_base={"REMOTE_ADDR": "10.1.1.1"}))
    assert (ledger_snapshot(), any_api.balance(alice)) == before

    # Per IP: wrong pay passwords of several accounts from one address, each account under its own limit.
    ip_limit = any_api.front.limits.pay_ip.max_failures
    failures = 0
    while failures < ip_limit:
        user = any_api.user(f"user{failures}", funds=10)
        for _ in range(min(limit, ip_limit - failures)):
            wrong = any_api.transfer(user, "bob", "1", pay_password="wrong-pay",
                                     environ_base={"REMOTE_ADDR": "10.2.2.2"})
            assert wrong.status_code == 403 and wrong.json["code"] == "wrong_pay_password"
            failures += 1
    fresh = any_api.user("fresh", funds=10)
    assert_limited(any_api.transfer(fresh, "bob", "1", environ_base={"REMOTE_ADDR": "10.2.2.2"}))
    assert any_api.transfer(fresh, "bob", "1", environ_base={"REMOTE_ADDR": "10.2.2.3"}).status_code == 201


def register(api, username: str, ip: str = "10.0.0.1"):
    return api.client.post("/api/v1/accounts", environ_base={"REMOTE_ADDR": ip},
                           json={"username": username, "password": PASSWORD, "pay_password": PAY_PASSWORD})


def test_registrations_per_ip(any_api):
    """Attempts count, not only failures: each costs two argon2 hashes and may create an account."""
    any_api.user("bob", login=False)
    limit = any_api.front.limits.register_ip.max_failures
    for _ in range(limit):
        assert register(any_api, "bob", "10.3.3.3").json["code"] == "username_taken"
    accounts = Account.select().count()
    assert_limited(register(any_api, "carol", "10.3.3.3"))
    assert Account.select().count() == accounts
    assert register(any_api, "carol", "10.3.3.4").status_code == 201


def test_a_taken_username_is_refused_before_hashing(api, monkeypatch):
    api.user("bob", login=False)
    hashed = []
    monkeypatch.setattr(accounts, "hash_secret", lambda secret: hashed.append(1) or hash_secret(secret))
    taken = register(api, "bob")
    assert taken.status_code == 409 and taken.json["code"] == "username_taken"
    assert hashed == []
    assert register(api, "carol").status_code == 201 and len(hashed) == 2
