"""A table of bad requests: each gets its status and stable problem `code`, and moves no money, writes
no journal row and creates no account.

The table shares one actor system (module scope) so that ~60 cases cost one start; the per-test
"no actor survives" guard is replaced by the same check at the end of the module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
from typing import Any

import pykka
import pytest
import redis

from storage.db import drop_mysql_database
from storage.models import Account
from tests.conftest import REDIS_URL, create_migrated_mysql_database, make_config, new_mysql_url
from tests.web.conftest import PAY_PASSWORD, PASSWORD, Api, User, ledger_snapshot, start_api


@pytest.fixture(autouse=True)
def _no_actor_survives():
    """Overrides the per-test guard of tests/conftest.py: here the system lives for the whole module."""
    yield


@pytest.fixture(scope="module")
def shared():
    url, prefix = new_mysql_url(), f"wallet-test-{secrets.token_hex(6)}"
    create_migrated_mysql_database(url)
    system, api = start_api(make_config(url, prefix))
    try:
        alice = api.user("alice", funds=1_000)
        bob = api.user("bob", login=False)
        # A first transfer under a known key, so that reusing the key with another body can be tried.
        assert api.transfer(alice, "bob", "1", key="used-key").status_code == 201
        api.wait_balance(bob, (1, 0))  # the cross-shard credit has landed: the ledger is quiet now
        yield api, alice
    finally:
        system.stop()
        drop_mysql_database(url)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        survivors = pykka.ActorRegistry.get_all()
        pykka.ActorRegistry.stop_all()
        assert not survivors, f"actors left running: {survivors}"


ABSENT: Any = object()  # "leave this out" (a field of a body, or the JSON body itself)


def transfer_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to_username": "bob", "asset": "ETH", "amount": "5", "pay_password": PAY_PASSWORD}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ABSENT}


def without(field: str) -> dict[str, Any]:
    return transfer_body(**{field: ABSENT})


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str = "/api/v1/transfers"
    json: Any = ABSENT
    data: bytes | str | None = None
    content_type: str | None = None
    headers: dict[str, str] | None = None  # replaces the default (auth + a fresh Idempotency-Key)
    query: dict[str, str] | None = None
    auth: bool = True
    key: str | None = "fresh"
    chunked: bool = False  # send `data` as a stream without Content-Length, as a chunked request arrives


    def send(self, api: Api, alice: User):
        headers = dict(alice.auth) if self.auth else {}
        if self.key == "fresh":
            headers["Idempotency-Key"] = api.new_key()
        elif self.key is not None:
            headers["Idempotency-Key"] = self.key
        headers.update(self.headers or {})
        kwargs: dict[str, Any] = {"headers": headers, "query_string": self.query}
        if self.json is not ABSENT:
            kwargs["json"] = self.json
        if self.chunked:
            headers["Transfer-Encoding"] = "chunked"
            kwargs["input_stream"] = io.BytesIO(self.data)
            kwargs["environ_overrides"] = {"wsgi.input_terminated": True}  # what granian sets
        elif self.data is not None:
            kwargs["data"] = self.data
        if self.content_type is not None:
            kwargs["content_type"] = self.content_type
        return api.client.open(self.path, method=self.method, **kwargs)


def amount_case(name: str, amount: Any) -> Case:
    return Case(f"amount {name}", 400, "invalid_amount", json=transfer_body(amount=amount))


def register_case(name: str, **body: Any) -> Case:
    base = {"username": "newuser", "password": PASSWORD, "pay_password": PAY_PASSWORD, **body}
    return Case(f"register {name}", 400, "validation_error", path="/api/v1/accounts", auth=False, key=None,
                json={k: v for k, v in base.items() if v is not ABSENT})


BIG = "x" * (64 * 1024 + 1)


def valid_prefix_then_junk() -> bytes:
    """A valid transfer padded to exactly 64 KiB, then more: cut at the limit it would parse."""
    body = json.dumps(transfer_body(amount="7")).encode()
    return body + b" " * (64 * 1024 - len(body)) + b"junk"

CASES = [
    # -- the body as a whole
    Case("malformed JSON", 400, "malformed_json", data='{"to_username": "bob",', content_type="application/json"),
    Case("invalid UTF-8", 400, "malformed_json", data=b'{"amount": "\xff\xfe"}', content_type="application/json"),
    Case("empty body", 400, "malformed_json", data="", content_type="application/json"),
    Case("deeply nested JSON", 400, "malformed_json", data="[" * 5000 + "]" * 5000, content_type="application/json"),
    Case("text/plain body", 415, "unsupported_media_type", data='{"amount": "5"}', content_type="text/plain"),
    Case("form body", 415, "unsupported_media_type", data="amount=5",
         content_type="application/x-www-form-urlencoded"),
    Case("no content type", 415, "unsupported_media_type", data='{"amount": "5"}'),
    Case("array body", 400, "validation_error", json=[transfer_body()]),
    Case("string body", 400, "validation_error", json="transfer"),
    Case("null body", 400, "validation_error", data="null", content_type="application/json"),
    Case("unknown field", 400, "validation_error", json=transfer_body(from_username="bob")),
    Case("missing amount", 400, "invalid_amount", json=without("amount")),
    Case("missing to_username", 400, "validation_error", json=without("to_username")),
    Case("missing pay_password", 400, "validation_error", json=without("pay_password")),
    Case("oversized body", 413, "payload_too_large", json=transfer_body(note=BIG)),
    Case("oversized body, wrong type", 413, "payload_too_large", data=BIG, content_type="application/json"),
    Case("oversized chunked body", 413, "payload_too_large", data=valid_prefix_then_junk(),
         content_type="application/json", chunked=True),
    # -- amounts: strings of digits only, 1 <= amount < 10**65
    amount_case("as a JSON number", 5),
    amount_case("as a float", 5.0),
    amount_case("as a boolean", True),
    amount_case("null", None),
    amount_case("negative", "-5"),
    amount_case("zero", "0"),
    amount_case("fractional", "1.5"),
    amount_case("exponent", "1e3"),
    amount_case("hex", "0x10"),
    amount_case("non-numeric", "five"),
    amount_case("empty", ""),
    amount_case("padded", " 5"),
    amount_case("leading zeros", "007"),
    amount_case("non-ASCII digits", "\u0663\u0664"),
    amount_case("full-width digits", "\uff11\uff12"),
    amount_case("10**65", str(10**65)),
    amount_case("huge", "9" * 1000),
    # -- business rules
    Case("unknown asset", 400, "unknown_asset", json=transfer_body(asset="DOGE")),
    Case("lowercase asset", 400, "validation_error", json=transfer_body(asset="eth")),
    Case("unknown recipient", 404, "unknown_account", json=transfer_body(to_username="nobody")),
    Case("bad recipient name", 400, "validation_error", json=transfer_body(to_username="Bob!")),
    Case("system account as recipient", 400, "validation_error", json=transfer_body(to_username="system:world:0")),
    Case("transfer to self", 400, "self_transfer", json=transfer_body(to_username="alice")),
    Case("insufficient funds", 422, "insufficient_funds", json=transfer_body(amount="1000")),
    Case("largest amount, insufficient", 422, "insufficient_funds", json=transfer_body(amount=str(10**65 - 1))),
    Case("wrong pay password", 403, "wrong_pay_password", json=transfer_body(pay_password="not-the-one")),
    Case("short pay password", 400, "validation_error", json=transfer_body(pay_password="123")),
    # -- idempotency keys
    Case("missing Idempotency-Key", 400, "idempotency_key_missing", json=transfer_body(), key=None),
    Case("empty Idempotency-Key", 400, "idempotency_key_missing", json=transfer_body(), key=""),
    Case("long Idempotency-Key", 400, "idempotency_key_invalid", json=transfer_body(), key="k" * 129),
    Case("Idempotency-Key with spaces", 400, "idempotency_key_invalid", json=transfer_body(), key="a key"),
    Case("reused Idempotency-Key", 422, "idempotency_key_reused", json=transfer_body(amount="2"), key="used-key"),
    # -- routing
    Case("unknown route", 404, "not_found", method="GET", path="/api/v1/nothing-here"),
    Case("unknown route without token", 404, "not_found", method="GET", path="/nope", auth=False),
    Case("wrong method", 405, "method_not_allowed", method="PUT", json=transfer_body()),
    Case("wrong method on a read", 405, "method_not_allowed", method="POST", path="/api/v1/balances", json={}),
    # -- query strings
    Case("history limit 0", 400, "validation_error", method="GET", path="/api/v1/history", query={"limit": "0"}),
    Case("history limit too big", 400, "validation_error", method="GET", path="/api/v1/history",
         query={"limit": "201"}),
    Case("history limit text", 400, "validation_error", method="GET", path="/api/v1/history", query={"limit": "ten"}),
    Case("history negative cursor", 400, "validation_error", method="GET", path="/api/v1/history",
         query={"cursor": "-1"}),
    Case("history huge cursor", 400, "validation_error", method="GET", path="/api/v1/history",
         query={"cursor": "9" * 30}),
    Case("history unknown parameter", 400, "validation_error", method="GET", path="/api/v1/history",
         query={"account_id": "1"}),
    # -- registration and login
    register_case("short username", username="ab"),
    register_case("uppercase username", username="Alice2"),
    register_case("username with colon", username="system:x"),
    register_case("long username", username="a" * 33),
    register_case("short password", password="1234567"),
    register_case("long password", password="p" * 129),
    register_case("numeric pay password", pay_password=123456),
    register_case("missing pay password", pay_password=ABSENT),
    Case("register taken username", 409, "username_taken", path="/api/v1/accounts", auth=False, key=None,
         json={"username": "bob", "password": PASSWORD, "pay_password": PAY_PASSWORD}),
    Case("register oversized", 413, "payload_too_large", path="/api/v1/accounts", auth=False, key=None,
         json={"username": "newuser", "password": BIG, "pay_password": PAY_PASSWORD}),
    Case("login wrong password", 401, "invalid_credentials", path="/api/v1/sessions", auth=False, key=None,
         json={"username": "alice", "password": "wrong password"}),
    Case("login unknown user", 401, "invalid_credentials", path="/api/v1/sessions", auth=False, key=None,
         json={"username": "nobody", "password": PASSWORD}),
    Case("login extra field", 400, "validation_error", path="/api/v1/sessions", auth=False, key=None,
         json={"username": "alice", "password": PASSWORD, "otp": "1"}),
]


def state(api: Api, alice: User) -> tuple:
    bob_id = api.system.router.directory.lookup("bob")[0]
    return (ledger_snapshot(), Account.select().count(), api.balance(alice),
            api.system.router.balances(bob_id)["ETH"])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_with_a_code_and_changes_nothing(shared, case: Case):
    api, alice = shared
    before = state(api, alice)
    response = case.send(api, alice)
    assert (response.status_code, response.json.get("code")) == (case.status, case.code), response.json
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem["status"] == case.status and problem["type"].endswith(case.code)
    assert problem["title"] and problem["detail"]
    if case.status == 405:
        assert "Allow" in response.headers
    assert state(api, alice) == before


def test_validation_problems_name_fields_but_never_echo_values(shared):
    api, alice = shared
    secret = "my-secret-pay-password-typo-" + "z" * 200  # too long: refused by validation
    response = api.transfer(alice, "bob", "5", pay_password=secret)
    assert response.status_code == 400 and response.json["code"] == "validation_error"
    assert response.json["errors"] == [{"field": "pay_password",
                                        "message": "String should have at most 128 characters"}]
    assert secret not in response.get_data(as_text=True)


def test_a_cursor_past_18_digits_is_a_400(any_api):
    """SQLite binds integers below 2**63 only (a larger one was a 500 there); MariaDB compared it fine.
    18 digits are always below 2**63 and far above any id."""
    alice = any_api.user("alice")
    for path in ("/api/v1/history", "/api/v1/deposits"):
        for cursor in ("9" * 19, str(2**63), "9" * 20):
            response = any_api.client.get(path, headers=alice.auth, query_string={"cursor": cursor})
            assert (response.status_code, response.json["code"]) == (400, "validation_error"), response.json
            assert response.json["errors"][0]["field"] == "cursor"
        assert any_api.client.get(path, headers=alice.auth, query_string={"cursor": "9" * 18}).status_code == 200
