"""The front's edge: abuse limits from the configuration (WALLET_RATE_LIMITS), a 429 that says what was
counted, the client IP behind trusted reverse proxies (WALLET_TRUSTED_PROXIES), and logins that check the
password rather than the registration policy."""

from __future__ import annotations

import dataclasses

from storage.models import Account
from tests.web.conftest import PASSWORD, PAY_PASSWORD, Api
from web import create_app
from web.models import WebSession
from web.security import Limit, Limits


def edge_api(api: Api, **overrides) -> Api:
    """Another front over the same actor system, built from its own configuration as `wallet serve` does."""
    config = dataclasses.replace(api.system.config, **overrides)
    return Api(api.system, create_app(api.system, config))


def register(api: Api, username: str, ip: str = "10.0.0.1", forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    return api.client.post("/api/v1/accounts", environ_base={"REMOTE_ADDR": ip}, headers=headers,
                           json={"username": username, "password": PASSWORD, "pay_password": PAY_PASSWORD})


def login(api: Api, username: str, password: str | None, ip: str = "10.0.0.1"):
    body = {"username": username} if password is None else {"username": username, "password": password}
    return api.client.post("/api/v1/sessions", json=body, environ_base={"REMOTE_ADDR": ip})


def assert_limited(response, says: str, window_s: int) -> None:
    assert response.status_code == 429 and response.json["code"] == "rate_limited", response.json
    assert response.json["detail"] == f"too many {says}; retry later"
    assert 1 <= int(response.headers["Retry-After"]) <= window_s


def assert_counted(response) -> None:
    """A registration of a taken name: counted against the IP, refused before any hashing."""
    assert response.status_code == 409 and response.json["code"] == "username_taken", response.json


# -- limits from the configuration -----------------------------------------------------------------


def test_the_front_builds_its_limits_from_the_defaults_and_the_configuration(any_api):
    edge = edge_api(any_api, rate_limits=(("register:ip", 2, 60), ("login:account", 1, 30)))
    limits, defaults = edge.front.limits, Limits()
    assert limits.register_ip == Limit("register:ip", 2, 60, counts="registrations")
    assert limits.login_account == Limit("login:account", 1, 30)
    assert (limits.login_ip, limits.pay_account, limits.pay_ip) == (
        defaults.login_ip, defaults.pay_account, defaults.pay_ip)
    assert any_api.front.limits == defaults  # no overrides: the built-in limits


def test_a_configured_registration_limit_applies_and_its_429_says_registrations(any_api):
    any_api.user("bob", login=False)
    edge = edge_api(any_api, rate_limits=(("register:ip", 2, 60),))
    for _ in range(2):
        assert_counted(register(edge, "bob", "10.4.4.4"))
    accounts = Account.select().count()
    assert_limited(register(edge, "carol", "10.4.4.4"), "registrations (register:ip)", 60)
    assert Account.select().count() == accounts
    assert register(edge, "carol", "10.4.4.5").status_code == 201  # another address: its own count
    # The same counter, under the built-in limit of 20: the front with defaults still lets it through.
    assert register(any_api, "dave", "10.4.4.4").status_code == 201
    assert Account.select().count() == accounts + 2


def test_a_configured_login_limit_applies_and_its_429_says_failed_attempts(any_api):
    any_api.user("alice", login=False)
    edge = edge_api(any_api, rate_limits=(("login:account", 1, 30),))
    wrong = login(edge, "alice", "wrong password", "10.7.0.1")
    assert wrong.status_code == 401 and wrong.json["code"] == "invalid_credentials"
    sessions = WebSession.select().count()
    assert_limited(login(edge, "alice", PASSWORD, "10.7.0.2"), "failed attempts (login:account)", 30)
    assert WebSession.select().count() == sessions  # refused before the password was checked: no session


# -- the client IP behind reverse proxies ----------------------------------------------------------


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_change_the_counted_ip(any_api):
    any_api.user("bob", login=False)
    edge = edge_api(any_api, trusted_proxies=0, rate_limits=(("register:ip", 2, 900),))
    assert_counted(register(edge, "bob", "10.5.5.5", forwarded_for="198.51.100.1"))
    assert_counted(register(edge, "bob", "10.5.5.5", forwarded_for="198.51.100.2"))
    accounts = Account.select().count()
    # A third "client" by its header, the same peer: the same per-IP count, now over the limit.
    assert_limited(register(edge, "carol", "10.5.5.5", forwarded_for="198.51.100.3"),
                   "registrations (register:ip)", 900)
    assert Account.select().count() == accounts
    # Nothing was counted against the forged addresses: a peer that really has one is not limited.
    assert_counted(register(edge, "bob", "198.51.100.1"))


def test_with_one_trusted_proxy_the_last_forwarded_for_hop_is_the_client(any_api):
    any_api.user("bob", login=False)
    edge = edge_api(any_api, trusted_proxies=1, rate_limits=(("register:ip", 2, 900),))
    proxy = "10.6.6.6"
    # The client may send its own X-Forwarded-For; the proxy appends the address it saw, which is used.
    assert_counted(register(edge, "bob", proxy, forwarded_for="203.0.113.9, 192.0.2.1"))
    assert_counted(register(edge, "bob", proxy, forwarded_for="192.0.2.1"))
    accounts = Account.select().count()
    assert_limited(register(edge, "carol", proxy, forwarded_for="192.0.2.1"), "registrations (register:ip)", 900)
    assert Account.select().count() == accounts
    # Other clients behind the same proxy have their own counts, whatever they put in front.
    assert_counted(register(edge, "bob", proxy, forwarded_for="192.0.2.2"))
    assert_counted(register(edge, "bob", proxy, forwarded_for="192.0.2.1, 192.0.2.3"))
    assert register(edge, "carol", proxy, forwarded_for="192.0.2.2").status_code == 201
    assert Account.select().count() == accounts + 1
    # The proxy itself was never counted: every request above came from it.
    assert_counted(register(edge, "bob", proxy))
    assert_counted(register(edge, "bob", proxy))


def test_with_two_trusted_proxies_the_second_hop_from_the_right_is_the_client(any_api):
    any_api.user("bob", login=False)
    edge = edge_api(any_api, trusted_proxies=2, rate_limits=(("register:ip", 1, 900),))
    assert_counted(register(edge, "bob", "10.8.0.1", forwarded_for="203.0.113.7, 192.0.2.50, 10.8.0.2"))
    # Another inner proxy and another forged value, the same client: limited.
    assert_limited(register(edge, "bob", "10.8.0.1", forwarded_for="192.0.2.50, 10.8.0.3"),
                   "registrations (register:ip)", 900)
    assert_counted(register(edge, "bob", "10.8.0.1", forwarded_for="192.0.2.50, 192.0.2.51, 10.8.0.2"))


# -- logins check the password, not the registration policy ---------------------------------------


def test_a_wrong_password_of_any_length_is_401_and_counts_as_a_failure(any_api):
    any_api.user("alice", login=False)
    edge = edge_api(any_api, rate_limits=(("login:account", 4, 900),))
    for wrong in ("x", "1234567", "p" * 128, "correct horse batter"):
        refused = login(edge, "alice", wrong, "10.9.0.1")
        assert refused.status_code == 401 and refused.json["code"] == "invalid_credentials", (wrong, refused.json)
    sessions = WebSession.select().count()
    assert_limited(login(edge, "alice", PASSWORD, "10.9.0.2"), "failed attempts (login:account)", 900)
    assert WebSession.select().count() == sessions


def test_an_empty_missing_or_oversized_password_is_400_and_not_a_failure(any_api):
    any_api.user("alice", login=False)
    edge = edge_api(any_api, rate_limits=(("login:account", 1, 900),))
    for password in ("", None, "p" * 129):
        refused = login(edge, "alice", password)
        assert refused.status_code == 400 and refused.json["code"] == "validation_error", refused.json
        assert [error["field"] for error in refused.json["errors"]] == ["password"]
    sessions = WebSession.select().count()
    assert login(edge, "alice", PASSWORD).status_code == 200  # nothing was counted: a limit of 1 still lets it in
    assert WebSession.select().count() == sessions + 1
