"""Every endpoint of HTTP API v1 over a real actor system, on MariaDB + Redis and on SQLite alone."""

from __future__ import annotations

import json
import re

import pytest
from eth_utils import is_checksum_address

from storage.models import ChainCursor, Deposit, Operation
from tests.web.conftest import PASSWORD, PAY_PASSWORD, ledger_snapshot
from app.audit import run_audit
from web.security import token_hash
from web.models import IdempotencyFailure, WebSession


def test_register_login_me_assets_balances(any_api):
    response = any_api.client.post("/api/v1/accounts", json={
        "username": "alice", "password": "a long password", "pay_password": "654321"})
    assert response.status_code == 201
    account = response.json
    assert set(account) == {"account_id", "username", "shard", "deposit_address", "recovery_codes"}
    account.pop("recovery_codes")
    assert account["username"] == "alice" and is_checksum_address(account["deposit_address"])

    again = any_api.client.post("/api/v1/accounts", json={
        "username": "alice", "password": "another password", "pay_password": "654321"})
    assert again.status_code == 409 and again.json["code"] == "username_taken"

    login = any_api.client.post("/api/v1/sessions", json={"username": "alice", "password": "a long password"})
    assert login.status_code == 200
    token = login.json["token"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", login.json["expires_at"])
    # Only the token's hash is stored.
    stored = WebSession.get(WebSession.account_id == account["account_id"])
    assert stored.token_hash == token_hash(token) and token not in stored.token_hash
    auth = {"Authorization": f"Bearer {token}"}

    assert any_api.client.get("/api/v1/me", headers=auth).json == account
    assert any_api.client.get("/api/v1/assets", headers=auth).json == {
        "assets": [{"symbol": "ETH", "decimals": 18, "contract": None}]}
    assert any_api.client.get("/api/v1/balances", headers=auth).json == {
        "balances": [{"asset": "ETH", "available": "0", "frozen": "0"}]}

    from tests.helpers import fund
    fund(any_api.system, account["account_id"], 10**30)
    balances = any_api.client.get("/api/v1/balances", headers=auth).json["balances"]
    assert balances == [{"asset": "ETH", "available": str(10**30), "frozen": "0"}]


def test_transfers_same_shard_and_cross_shard(any_api):
    alice = any_api.user("alice", funds=1_000)
    bob = any_api.user("bob")  # fewest-accounts placement: another shard than alice
    assert alice.shard != bob.shard
    for name in ("carol", "dave"):  # fill shards 2 and 3 so the next account lands with alice
        any_api.user(name, login=False)
    erin = any_api.user("erin")
    assert erin.shard == alice.shard

    same = any_api.transfer(alice, "erin", "100")
    assert same.status_code == 201 and same.json["status"] == "completed"
    assert same.json["id"].startswith(f"t:{alice.account_id}:")
    assert any_api.balance(erin) == (100, 0)

    cross = any_api.transfer(alice, "bob", "250")
    assert cross.status_code == 201 and cross.json["status"] == "in_transit"
    assert any_api.balance(alice) == (650, 0)
    any_api.wait_balance(bob, (250, 0))

    back = any_api.transfer(bob, "alice", "50")
    assert back.status_code == 201
    any_api.wait_balance(alice, (700, 0))
    balances = any_api.client.get("/api/v1/balances", headers=bob.auth).json["balances"]
    assert balances == [{"asset": "ETH", "available": "200", "frozen": "0"}]
    assert run_audit().ok


def test_history_pages_newest_first_with_counterparties(any_api):
    alice = any_api.user("alice", funds=1_000)
    bob = any_api.user("bob")
    for name in ("carol", "dave"):
        any_api.user(name, login=False)
    erin = any_api.user("erin")  # same shard as alice
    amounts = ["1", "2", "3", "4", "5"]
    for n, amount in enumerate(amounts):
        to = "bob" if n % 2 == 0 else "erin"
        assert any_api.transfer(alice, to, amount).status_code == 201
    any_api.wait_balance(bob, (1 + 3 + 5, 0))

    seen, cursor = [], None
    for _ in range(10):  # bounded: 6 entries in pages of 2
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = any_api.client.get("/api/v1/history", headers=alice.auth, query_string=query).json
        assert len(page["entries"]) <= 2
        seen.extend(page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["amount"] for e in seen] == ["-5", "-4", "-3", "-2", "-1", "1000"]
    assert [e["counterparty"] for e in seen] == ["bob", "erin", "bob", "erin", "bob", None]
    assert [e["kind"] for e in seen] == ["transfer"] * 5 + ["credit"]
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert all(e["bucket"] == "available" and e["asset"] == "ETH" for e in seen)

    # The recipient on the other shard sees incoming credits (via the outbox) naming the sender.
    bob_history = any_api.client.get("/api/v1/history", headers=bob.auth).json
    assert [(e["amount"], e["counterparty"], e["kind"]) for e in bob_history["entries"]] == [
        ("5", "alice", "xcredit"), ("3", "alice", "xcredit"), ("1", "alice", "xcredit")]
    assert bob_history["next_cursor"] is None
    erin_history = any_api.client.get("/api/v1/history", headers=erin.auth, query_string={"limit": "200"}).json
    assert [(e["amount"], e["counterparty"]) for e in erin_history["entries"]] == [("4", "alice"), ("2", "alice")]


def test_logout_revokes_the_token_and_its_pay_password_memo(any_api):
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    assert any_api.transfer(alice, "bob", "1").status_code == 201  # pay password now remembered
    other_session = any_api.login("alice")

    response = any_api.client.delete("/api/v1/sessions/current", headers=alice.auth)
    assert response.status_code == 204
    before = ledger_snapshot()
    for path in ("/api/v1/me", "/api/v1/balances", "/api/v1/history"):
        revoked = any_api.client.get(path, headers=alice.auth)
        assert revoked.status_code == 401 and revoked.json["code"] == "invalid_token"
    assert any_api.transfer(alice, "bob", "1").json["code"] == "invalid_token"
    assert any_api.client.delete("/api/v1/sessions/current", headers=alice.auth).status_code == 401
    assert ledger_snapshot() == before
    assert WebSession.get(WebSession.token_hash == token_hash(alice.token)).revoked_at is not None
    # Other sessions of the same account live on.
    assert any_api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {other_session}"}).status_code == 200


def test_ops_endpoints_and_request_ids(any_api):
    health = any_api.client.get("/healthz")
    assert health.status_code == 200 and health.json == {"status": "ok"}
    ready = any_api.ops.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    assert ready.json["checks"]["database"] and ready.json["checks"]["actor:shard-3"]
    assert ("redis" in ready.json["checks"]) == (any_api.system.redis is not None)

    echoed = any_api.client.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert echoed.headers["X-Request-ID"] == "req-123"
    replaced = any_api.client.get("/healthz", headers={"X-Request-ID": "bad id\u00e9"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])

    alice = any_api.user("alice", funds=10)
    any_api.user("bob", login=False)
    assert any_api.transfer(alice, "bob", "1").status_code == 201
    metrics = any_api.ops.get("/metrics")
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'wallet_http_requests_total{endpoint="transfers.create_transfer",method="POST",status="201"} 1.0' in text
    assert "wallet_http_request_duration_seconds_bucket" in text
    assert 'wallet_shard_queue_depth{shard="0"}' in text and 'wallet_shard_up{shard="3"} 1.0' in text
    assert "wallet_shard_last_batch_size" in text
    assert "wallet_pool_remaining 28.0" in text  # 30 generated, 2 assigned


def test_openapi_document_lists_every_route(any_api):
    doc = any_api.client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "Token from POST /api/v1/sessions"}
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(method, re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule))
              for rule in any_api.app.url_map.iter_rules()
              if not rule.endpoint.startswith("console.")  # the admin console's HTML pages are not the API
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            problems = [s for s in op["responses"] if s.startswith(("4", "5"))]
            for status in problems:
                assert "application/problem+json" in op["responses"][status]["content"]
            if op.get("security") != []:
                assert "401" in op["responses"], (method, path)


def test_a_shard_that_does_not_answer_gives_503_and_the_retry_applies_once(mysql_url, redis_prefix):
    """Block the shard's commit on a row lock: the front answers 503 after the ask timeout; once the lock
    is released the shard commits the transfer once, and the client's retry with the same key gets the
    first result."""
    from storage.db import make_database
    from tests.conftest import make_config
    from tests.web.conftest import start_api

    system, api = start_api(make_config(mysql_url, redis_prefix, ask_timeout_s=1.0))
    blocker = make_database(mysql_url)
    try:
        alice = api.user("alice", funds=100)
        api.user("bob", login=False)
        blocker.connect()
        blocker.begin()
        blocker.execute_sql("SELECT * FROM balance WHERE account_id = %s FOR UPDATE", (alice.account_id,))
        stalled = api.transfer(alice, "bob", "30", key="retry-me")
        assert stalled.status_code == 503 and stalled.json["code"] == "service_unavailable"
        assert stalled.headers["Content-Type"] == "application/problem+json"
        assert IdempotencyFailure.select().count() == 0  # nothing was decided: the retry must be able to apply
        blocker.rollback()
        api.wait_balance(alice, (70, 0))
        retried = api.transfer(alice, "bob", "30", key="retry-me")
        assert retried.status_code == 201 and retried.json["status"] == "in_transit"
        assert Operation.select().where(Operation.op_id == retried.json["id"]).count() == 1
        assert api.balance(alice) == (70, 0)
    finally:
        blocker.close_all()
        system.stop()


def test_logs_are_json_with_request_ids_and_no_secrets(any_api, caplog):
    from app.logs import JsonFormatter

    caplog.set_level("DEBUG")
    alice = any_api.user("alice", funds=100)
    any_api.user("bob", login=False)
    secrets_used = [PASSWORD, PAY_PASSWORD, alice.token, "wrong-pay-password", "very secret password"]
    any_api.client.post("/api/v1/accounts", json={"username": "carol", "password": "very secret password",
                                                  "pay_password": "wrong-pay-password"})
    any_api.client.post("/api/v1/sessions", json={"username": "alice", "password": "very secret password"})
    any_api.transfer(alice, "bob", "1", pay_password="wrong-pay-password")
    assert any_api.transfer(alice, "bob", "1", headers={"X-Request-ID": "trace-me"}).status_code == 201
    any_api.client.post("/api/v1/transfers", data="{" + PAY_PASSWORD, content_type="application/json",
                        headers={**alice.auth, "Idempotency-Key": "x"})

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    for line in lines:
        for secret in secrets_used:
            assert secret not in line
    access = [json.loads(line) for line in lines if '"logger": "web.access"' in line]
    assert len(access) >= 5 and all(entry["request_id"] for entry in access)
    traced = [entry for entry in access if entry["request_id"] == "trace-me"]
    assert traced == [{**traced[0], "endpoint": "transfers.create_transfer", "status": 201,
                       "account_id": alice.account_id}]


def test_an_exhausted_connection_pool_gives_503(api):
    """Every pooled connection busy (the actors hold theirs, none idle, no room for another): peewee's
    MaxConnectionsExceeded, a ValueError, must be a 503 the client retries, not a 500."""
    alice = api.user("alice", funds=100)
    db = api.system.db
    db.close_idle()
    assert len(db._in_use) >= 1, "the actors hold pooled connections"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db, "_max_connections", len(db._in_use))
        patch.setattr(db, "_wait_timeout", 0.1)  # wait for a free connection briefly, not the configured time
        exhausted = api.client.get("/api/v1/history", headers=alice.auth)
    assert exhausted.status_code == 503 and exhausted.json["code"] == "service_unavailable"
    assert exhausted.mimetype == "application/problem+json"
    assert api.client.get("/api/v1/history", headers=alice.auth).status_code == 200


def test_deposits_page_newest_first_with_live_confirmations(api):
    """Deposit rows as BlockWatch writes them: pages of 2 by cursor, confirmations counted from the tip,
    0 for a deposit whose block left the chain; another account's deposits never show."""
    alice = api.user("alice")
    bob = api.user("bob", login=False)
    chain_id, tip = 31337, 110
    ChainCursor.insert(chain_id=chain_id, height=tip, start_height=100).execute()
    rows = [(alice.account_id, 101, "confirmed", "1000"), (bob.account_id, 102, "pending", "7"),
            (alice.account_id, 103, "orphaned", "2000"), (alice.account_id, 108, "pending", "3000")]
    for n, (account_id, block, status, amount) in enumerate(rows):
        Deposit.insert(chain_id=chain_id, tx_hash="0x" + f"{n:02x}" * 32, log_index=-1, account_id=account_id,
                       address="0x" + "00" * 20, asset="ETH", amount=int(amount), block_number=block,
                       block_hash="0x" + "11" * 32, status=status).execute()

    seen, cursor = [], None
    for _ in range(5):  # bounded: 3 deposits in pages of 2
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/api/v1/deposits", headers=alice.auth, query_string=query).json
        assert len(page["deposits"]) <= 2
        seen.extend(page["deposits"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(d["amount"], d["status"], d["confirmations"]) for d in seen] == [
        ("3000", "pending", tip - 108 + 1), ("2000", "orphaned", 0), ("1000", "confirmed", tip - 101 + 1)]
    ids = [int(d["id"]) for d in seen]
    assert ids == sorted(ids, reverse=True)
