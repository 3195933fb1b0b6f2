"""Issue 9, finding 8: the small edges of the front, one test each."""

from __future__ import annotations

import dataclasses
import logging

import redis

from tests.conftest import REDIS_URL
from tests.web.conftest import PASSWORD, PAY_PASSWORD, Api
from web import create_app


def test_no_redirect_built_from_the_host_header(any_api):
    alice = any_api.user("alice")
    for path in ("/api/v1//me", "/api/v1/me/", "//api/v1/me"):
        answer = any_api.client.get(path, headers={**alice.auth, "Host": "evil.example"})
        assert answer.status_code == 404, (path, answer.status_code, answer.headers.get("Location"))
        assert "Location" not in answer.headers
        assert answer.mimetype == "application/problem+json" and answer.json["code"] == "not_found"
    assert not [rule.rule for rule in any_api.app.url_map.iter_rules() if rule.rule.endswith("/")], \
        "a route ending in '/' would redirect its slash-less form"


def test_a_body_with_a_repeated_key_is_refused(any_api):
    alice = any_api.user("alice", funds=10)
    any_api.user("bob", login=False)
    raw = ('{"to_username": "bob", "asset": "ETH", "amount": "1", "amount": "3", "pay_password": "%s"}'
           % PAY_PASSWORD)
    answer = any_api.client.post("/api/v1/transfers", data=raw, content_type="application/json",
                                 headers={**alice.auth, "Idempotency-Key": "dup"})
    assert (answer.status_code, answer.json["code"]) == (400, "duplicate_key")
    assert "amount" in answer.json["detail"]
    assert any_api.balance(alice) == (10, 0)
    nested = any_api.client.post("/api/v1/accounts", data='{"username": "carol", "username": "dave", '
                                 f'"password": "{PASSWORD}", "pay_password": "{PAY_PASSWORD}"}}',
                                 content_type="application/json")
    assert (nested.status_code, nested.json["code"]) == (400, "duplicate_key")


def test_security_headers_on_every_response(any_api):
    alice = any_api.user("alice", funds=10)
    for answer in (any_api.client.post("/api/v1/sessions", json={"username": "alice", "password": PASSWORD}),
                   any_api.client.get("/api/v1/balances", headers=alice.auth),
                   any_api.client.get("/api/v1/history", headers=alice.auth),
                   any_api.client.get("/api/v1/nothing-here"), any_api.client.get("/healthz")):
        assert answer.headers["Cache-Control"] == "no-store", answer.request.path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "Server" not in answer.headers  # the HTTP server's own is blanked (tests/process/test_front_attack.py)


def test_query_integers_are_plain_digits(any_api):
    alice = any_api.user("alice")
    for bad in ("1_0", "+5", " 5", "5 ", "0x10", "٥", "1e1", "-1", "0"):
        answer = any_api.client.get("/api/v1/history", query_string={"limit": bad}, headers=alice.auth)
        assert answer.status_code == 400, (bad, answer.json)
    assert any_api.client.get("/api/v1/history?limit=10", headers=alice.auth).status_code == 200


def test_passwords_with_control_characters_are_refused(any_api):
    for password, pay in (("\x00" * 12, PAY_PASSWORD), ("good password\x07", PAY_PASSWORD), (PASSWORD, "\x00" * 8),
                          (PASSWORD, "pay\x9fpass1")):
        answer = any_api.client.post("/api/v1/accounts", json={"username": "carol", "password": password,
                                                               "pay_password": pay})
        assert answer.status_code == 400, answer.json
    ok = any_api.client.post("/api/v1/accounts", json={"username": "carol", "password": "pässwörd ok €",
                                                       "pay_password": PAY_PASSWORD})
    assert ok.status_code == 201, ok.json


def test_the_code_names_the_real_fault(any_api):
    answer = any_api.client.post("/api/v1/accounts", json={"username": "carol", "password": PASSWORD,
                                                           "pay_password": PAY_PASSWORD, "amount": "1"})
    assert (answer.status_code, answer.json["code"]) == (400, "validation_error")  # not invalid_amount
    assert answer.json["errors"] == [{"field": "amount", "message": "Extra inputs are not permitted"}]
    alice = any_api.user("alice", funds=10)
    bad_amount = any_api.transfer(alice, "bob", amount="01")
    assert (bad_amount.status_code, bad_amount.json["code"]) == (400, "invalid_amount")


def test_access_log_lines_carry_the_client_behind_trusted_proxies(any_api, caplog):
    caplog.set_level(logging.INFO, logger="web.access")
    direct = any_api.client.get("/healthz", environ_base={"REMOTE_ADDR": "198.51.100.7"},
                                headers={"X-Forwarded-For": "203.0.113.9"})
    proxied = Api(any_api.system, create_app(any_api.system, dataclasses.replace(any_api.system.config,
                                                                                 trusted_proxies=1)))
    via = proxied.client.get("/healthz", environ_base={"REMOTE_ADDR": "10.0.0.2"},
                             headers={"X-Forwarded-For": "203.0.113.9"})
    assert direct.status_code == via.status_code == 200
    clients = [r.client for r in caplog.records if r.name == "web.access"]
    assert clients == ["198.51.100.7", "203.0.113.9"]


def test_in_flight_marks_last_no_longer_than_the_ask_timeout_allows(api):
    """A front that shares its marks through Redis (one of several front processes) sets them with a TTL
    just past the ask timeout."""
    api.system.front_marks = None  # as a gate of a cluster: not the only front of its database
    api = Api(api.system, create_app(api.system))
    alice = api.user("alice", funds=10)
    api.user("bob", login=False)
    config = api.system.config
    client = redis.Redis.from_url(REDIS_URL)
    seen: list[int] = []
    original = api.front.router.transfer

    def transfer_and_look(*args, **kwargs):
        seen.extend(client.pttl(key) for key in client.scan_iter(f"{config.redis_prefix}:inflight:*"))
        return original(*args, **kwargs)

    api.front.router.transfer = transfer_and_look  # look at the mark while the request holds it
    try:
        assert api.transfer(alice, "bob", "1").status_code == 201
    finally:
        api.front.router.transfer = original
        client.close()
    assert len(seen) == 1 and 0 < seen[0] <= config.ask_timeout_s * 1000 + 1000, seen
