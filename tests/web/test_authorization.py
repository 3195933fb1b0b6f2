"""A user reads and moves only its own money: no token, bad tokens, expired, revoked and swapped tokens."""

from __future__ import annotations

import dataclasses

from storage.models import now_ms
from tests.web.conftest import ledger_snapshot
from web.models import WebSession
from web.security import token_hash

PROTECTED = [("GET", "/api/v1/me"), ("GET", "/api/v1/balances"), ("GET", "/api/v1/history"),
             ("GET", "/api/v1/assets"), ("POST", "/api/v1/transfers"), ("DELETE", "/api/v1/sessions/current")]

BAD_AUTHORIZATION = {
    None: "unauthorized",
    "": "unauthorized",
    "Bearer": "unauthorized",
    "Bearer ": "unauthorized",
    "Basic YWxpY2U6cGFzc3dvcmQ=": "unauthorized",
    "Token abcdefghijklmnopqrstuvwxyz": "unauthorized",
    "Bearer two words-abcdefghijklmnopqrstu": "unauthorized",
    "Bearer " + "a" * 129: "unauthorized",
    "Bearer abc$defghijklmnopqrstuvwxyz": "unauthorized",
    "Bearer " + "A" * 43: "invalid_token",  # well-formed, but never issued
}


def refused(api, method: str, path: str, authorization: str | None) -> str:
    headers = {"Idempotency-Key": api.new_key()}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = {"to_username": "bob", "asset": "ETH", "amount": "1", "pay_password": "pay-123456"}
    response = api.client.open(path, method=method, headers=headers, json=body if method == "POST" else None)
    assert response.status_code == 401, (method, path, authorization, response.json)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.mimetype == "application/problem+json"
    return response.json["code"]


def test_no_token_or_a_malformed_one_is_refused_everywhere(api):
    alice = api.user("alice", funds=100)
    api.user("bob", login=False)
    before = ledger_snapshot(), api.balance(alice)
    for method, path in PROTECTED:
        for authorization, code in BAD_AUTHORIZATION.items():
            assert refused(api, method, path, authorization) == code
    assert (ledger_snapshot(), api.balance(alice)) == before


def test_public_endpoints_need_no_token(api):
    for path in ("/healthz", "/api/v1/openapi.json"):
        assert api.client.get(path).status_code == 200, path
    for path in ("/healthz", "/readyz", "/metrics"):  # the operations listener's (WALLET_OPS_HTTP)
        assert api.ops.get(path).status_code == 200, path


def test_expired_and_revoked_tokens_are_refused(api):
    alice = api.user("alice", funds=100)
    api.user("bob", login=False)
    expired_token = "expired-" + "x" * 40
    WebSession.insert(token_hash=token_hash(expired_token), account_id=alice.account_id,
                      created_at=now_ms() - 7_200_000, expires_at=now_ms() - 1).execute()
    before = ledger_snapshot(), api.balance(alice)
    for method, path in PROTECTED:
        assert refused(api, method, path, f"Bearer {expired_token}") == "token_expired"

    # A session that expires while cached in the front is refused from its expiry on.
    live = api.login("alice")
    assert api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {live}"}).status_code == 200
    cache = api.front.sessions._cache  # move the cached expiry into the past: the clock an hour later
    session, checked_at = cache[token_hash(live)]
    cache[token_hash(live)] = (dataclasses.replace(session, expires_at_ms=now_ms() - 1), checked_at)
    assert refused(api, "GET", "/api/v1/me", f"Bearer {live}") == "token_expired"

    revoked = api.login("alice")
    assert api.client.delete("/api/v1/sessions/current",
                             headers={"Authorization": f"Bearer {revoked}"}).status_code == 204
    for method, path in PROTECTED:
        assert refused(api, method, path, f"Bearer {revoked}") == "invalid_token"
    assert (ledger_snapshot(), api.balance(alice)) == before


def test_each_token_sees_and_moves_only_its_own_account(api):
    alice = api.user("alice", funds=1_000)
    bob = api.user("bob", funds=50)
    assert api.transfer(alice, "bob", "100").status_code == 201
    api.wait_balance(bob, (150, 0))

    for user, other in ((alice, bob), (bob, alice)):
        me = api.client.get("/api/v1/me", headers=user.auth).json
        assert me["account_id"] == user.account_id and me["username"] == user.username
        history = api.client.get("/api/v1/history", headers=user.auth).json["entries"]
        assert {e["op_id"] for e in history}  # has entries, all of them its own
        balances = api.client.get("/api/v1/balances", headers=user.auth).json["balances"]
        assert balances[0]["available"] == str(api.balance(user)[0])

    # Another account's cursor only pages one's own journal: nobody reads past their own entries.
    bob_page = api.client.get("/api/v1/history", headers=bob.auth, query_string={"limit": "1"}).json
    with_bobs_cursor = api.client.get("/api/v1/history", headers=alice.auth,
                                      query_string={"cursor": bob_page["next_cursor"]}).json["entries"]
    alice_all = api.client.get("/api/v1/history", headers=alice.auth).json["entries"]
    assert all(entry in alice_all for entry in with_bobs_cursor)

    # There is no way to name the paying account: a transfer always debits the token's account, and
    # the other user's pay password does not work with one's own token.
    before = ledger_snapshot(), api.balance(alice), api.balance(bob)
    forged = api.client.post("/api/v1/transfers", headers={**alice.auth, "Idempotency-Key": "forge"},
                             json={"to_username": "alice", "asset": "ETH", "amount": "1",
                                   "pay_password": "pay-123456", "from_username": "bob"})
    assert forged.status_code == 400 and forged.json["code"] == "validation_error"
    assert api.transfer(alice, "alice", "1").json["code"] == "self_transfer"
    assert (ledger_snapshot(), api.balance(alice), api.balance(bob)) == before


def test_account_ids_in_paths_do_not_exist(api):
    """The API never takes an account id from the client: guessed id routes are plain 404s."""
    alice = api.user("alice", funds=10)
    bob = api.user("bob", funds=10, login=False)
    for guessed in (str(bob.account_id), str(alice.account_id), "1", "999999"):
        for resource in ("accounts", "balances", "history", "me"):
            response = api.client.get(f"/api/v1/{resource}/{guessed}", headers=alice.auth)
            assert response.status_code == 404 and response.json["code"] == "not_found"
