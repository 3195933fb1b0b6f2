"""Every endpoint through a real `wallet serve` process on MariaDB + Redis, over real HTTP."""

from __future__ import annotations

import subprocess

import pytest
import requests

from tests.conftest import make_config
from tests.helpers import wait_until
from core.ports import free_port
from tests.process.support import (PAY_PASSWORD, WALLET, ServeProcess, eth_balance, login,
                                   password_of, prepare, wallet_env)

ETH = 10**18
USERS = {"alice": 10 * ETH, "bob": 0, "carol": 0, "dave": 0, "erin": 0}  # erin shares alice's shard


@pytest.fixture
def served(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    accounts = prepare(config, USERS)
    server = ServeProcess(wallet_env(config, free_port()), tmp_path / "serve.log")
    try:
        yield server.start(), accounts, config
    finally:
        server.ensure_stopped()


def test_every_endpoint_through_wallet_serve(served):
    server, accounts, config = served
    assert accounts["alice"][1] == accounts["erin"][1] != accounts["bob"][1]
    base, http = server.url, requests.Session()

    assert http.get(base + "/healthz").json() == {"status": "ok"}
    ready = http.get(server.ops_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] is True
    assert "/api/v1/transfers" in http.get(base + "/api/v1/openapi.json").json()["paths"]

    created = http.post(base + "/api/v1/accounts", json={"username": "frank", "password": password_of("frank"),
                                                         "pay_password": PAY_PASSWORD})
    assert created.status_code == 201 and created.json()["username"] == "frank"
    assert created.json()["deposit_address"].startswith("0x")
    taken = http.post(base + "/api/v1/accounts", json={"username": "frank", "password": password_of("frank"),
                                                       "pay_password": PAY_PASSWORD})
    assert (taken.status_code, taken.json()["code"]) == (409, "username_taken")

    assert http.get(base + "/api/v1/balances").status_code == 401
    token = login(http, base, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    me = http.get(base + "/api/v1/me", headers=auth).json()
    assert (me["username"], me["account_id"], me["shard"]) == ("alice", *accounts["alice"])
    assert "ETH" in [asset["symbol"] for asset in http.get(base + "/api/v1/assets", headers=auth).json()["assets"]]
    assert eth_balance(http, base, token) == (10 * ETH, 0)

    def transfer(key: str, to: str, amount: int) -> requests.Response:
        return http.post(base + "/api/v1/transfers", headers={**auth, "Idempotency-Key": key}, json={
            "to_username": to, "asset": "ETH", "amount": str(amount), "pay_password": PAY_PASSWORD})

    same_shard = transfer("k-same", "erin", 2 * ETH)
    assert (same_shard.status_code, same_shard.json()["status"]) == (201, "completed")
    cross_shard = transfer("k-cross", "bob", 3 * ETH)
    assert (cross_shard.status_code, cross_shard.json()["status"]) == (201, "in_transit")
    assert transfer("k-cross", "bob", 3 * ETH).json() == cross_shard.json()  # a retry: first answer
    too_much = transfer("k-big", "bob", 100 * ETH)
    assert (too_much.status_code, too_much.json()["code"]) == (422, "insufficient_funds")
    assert too_much.headers["Content-Type"].startswith("application/problem+json")

    assert eth_balance(http, base, token) == (5 * ETH, 0)
    assert eth_balance(http, base, login(http, base, "erin")) == (2 * ETH, 0)
    bob_token = login(http, base, "bob")
    wait_until(lambda: eth_balance(http, base, bob_token) == (3 * ETH, 0), timeout_s=10,
               what="the outbox credit of 3 ETH on bob's shard",
               detail=lambda: f"bob's balance: {eth_balance(http, base, bob_token)}")

    entries = http.get(base + "/api/v1/history", headers=auth).json()["entries"]
    assert [(e["op_id"], e["amount"], e["counterparty"]) for e in entries] == [
        (cross_shard.json()["id"], str(-3 * ETH), "bob"), (same_shard.json()["id"], str(-2 * ETH), "erin"),
        ("fund-alice", str(10 * ETH), None)]

    metrics = http.get(server.ops_url + "/metrics")
    assert metrics.status_code == 200 and "transfers" in metrics.text

    assert http.delete(base + "/api/v1/sessions/current", headers=auth).status_code == 204
    assert http.get(base + "/api/v1/me", headers=auth).status_code == 401

    assert server.terminate() == 0
    audit = subprocess.run([WALLET, "audit"], env=server.env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr
