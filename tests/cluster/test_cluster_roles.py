"""A small cluster of real processes (gate, transrv host, singletons) on MariaDB and Redis: the API works
across processes, each process says what it holds, and a gate's /readyz pings every shard through Redis.
A refusal one gate recorded is answered again by the other gate under the same key; a new pay password and
a logout at one gate hold at the other within FRONT_RECHECK_MS (polled, never slept on)."""

from __future__ import annotations

import json

import requests

from tests.cluster.support import SINGLETONS, RoleProcess
from tests.helpers import wait_until
from tests.conftest import make_config
from tests.process.support import PAY_PASSWORD, eth_balance, login, prepare


def test_gate_transrv_and_singletons_serve_the_api(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    accounts = prepare(config, {"alice": 10**18, "bob": 0, "carol": 0, "dave": 0, "frank": 10**18})
    procs = [RoleProcess(config, tmp_path / "single.log", SINGLETONS),
             RoleProcess(config, tmp_path / "transrv.log", "transrv", "0,1,2,3"),
             RoleProcess(config, tmp_path / "gate2.log", "gate"),
             RoleProcess(config, tmp_path / "gate.log", "gate")]
    try:
        for proc in procs:
            proc.start()
        gate = procs[-1]
        ready = gate.wait_ready()
        assert {f"actor:remote:shard-{s}" for s in range(4)} | {"actor:remote:allocator"} <= {k for k, v in ready["checks"].items() if v}
        started = [json.loads(line) for line in procs[1].log_text().splitlines()
                   if '"actor system started"' in line][0]
        assert started["roles"] == "transrv" and started["hosted_shards"] == "0,1,2,3"

        http = requests.Session()
        new = http.post(gate.url + "/api/v1/accounts", timeout=10,
                        json={"username": "erin", "password": "erin-password-1", "pay_password": "pay-654321"})
        assert new.status_code == 201, new.text
        token = login(http, gate.url, "alice")
        targets = ["bob", "carol", "dave"]  # on shards 1..3: cross-shard, across the stream
        assert {accounts[t][1] for t in targets} != {accounts["alice"][1]}
        for n, to in enumerate(targets):
            answer = http.post(gate.url + "/api/v1/transfers", timeout=10, json={
                "to_username": to, "asset": "ETH", "amount": "1000", "pay_password": PAY_PASSWORD},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"k-{n}"})
            assert answer.status_code == 201, answer.text
        again = http.post(gate.url + "/api/v1/transfers", timeout=10, json={
            "to_username": "bob", "asset": "ETH", "amount": "1000", "pay_password": PAY_PASSWORD},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k-0"})
        assert again.status_code == 201
        assert eth_balance(http, gate.url, token) == (10**18 - 3000, 0)
        _refusal_is_answered_again_by_another_gate(http, gate.url, procs[2].url, token)
        _credentials_changed_at_one_gate_hold_at_the_other(http, gate.url, procs[2].url)
        for proc in reversed(procs):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()


def _refusal_is_answered_again_by_another_gate(http, gate_a: str, gate_b: str, alice: str) -> None:
    """Alice is refused (insufficient funds) at gate A, then funded; her retry under the same key at gate B
    must get the same refusal, not apply: only the database's record is shared between gates. Gate B has
    served a transfer of its own first (what it knows of refusals is loaded by then)."""
    first = http.post(gate_b + "/api/v1/transfers", timeout=10, json={
        "to_username": "bob", "asset": "ETH", "amount": "1", "pay_password": PAY_PASSWORD},
        headers={"Authorization": f"Bearer {alice}", "Idempotency-Key": "at-b"})
    assert first.status_code == 201, first.text
    over = {"to_username": "bob", "asset": "ETH", "amount": str(10**18), "pay_password": PAY_PASSWORD}
    headers = {"Authorization": f"Bearer {alice}", "Idempotency-Key": "over"}
    refused = http.post(gate_a + "/api/v1/transfers", json=over, headers=headers, timeout=10)
    assert refused.status_code == 422 and refused.json()["code"] == "insufficient_funds", refused.text
    frank = login(http, gate_a, "frank")
    funded = http.post(gate_a + "/api/v1/transfers", timeout=10, json={
        "to_username": "alice", "asset": "ETH", "amount": str(10**18), "pay_password": PAY_PASSWORD},
        headers={"Authorization": f"Bearer {frank}", "Idempotency-Key": "fund-alice"})
    assert funded.status_code == 201, funded.text
    available = 2 * 10**18 - 3001
    wait_until(lambda: eth_balance(http, gate_a, alice) == (available, 0), timeout_s=10, what="alice credited")
    retried = http.post(gate_b + "/api/v1/transfers", json=over, headers=headers, timeout=10)
    assert retried.status_code == 422 and retried.json() == refused.json(), retried.text
    assert eth_balance(http, gate_b, alice) == (available, 0)


def _credentials_changed_at_one_gate_hold_at_the_other(http, gate_a: str, gate_b: str) -> None:
    carol = login(http, gate_a, "carol")  # funded by alice's transfer above: 1000 wei
    auth = {"Authorization": f"Bearer {carol}"}
    keys = iter(range(1000))

    def code_at_b(pay_password: str) -> str:
        """A transfer far over carol's balance: never applied; 422 if the pay password passed, 403 if not."""
        answer = http.post(gate_b + "/api/v1/transfers", timeout=10, json={
            "to_username": "bob", "asset": "ETH", "amount": str(10**30), "pay_password": pay_password},
            headers={**auth, "Idempotency-Key": f"probe-{next(keys)}"})
        return answer.json()["code"]

    assert code_at_b(PAY_PASSWORD) == "insufficient_funds"  # gate B remembers carol's pay password now
    changed = http.post(gate_a + "/api/v1/me/pay-password", headers=auth, timeout=10,
                        json={"current_pay_password": PAY_PASSWORD, "new_pay_password": "pay-777888"})
    assert changed.status_code == 204, changed.text
    wait_until(lambda: code_at_b(PAY_PASSWORD) == "wrong_pay_password", timeout_s=10, interval_s=0.2,
               what="the old pay password refused at gate B")
    assert code_at_b("pay-777888") == "insufficient_funds"
    logout = http.delete(gate_a + "/api/v1/sessions/current", headers=auth, timeout=10)
    assert logout.status_code == 204, logout.text
    wait_until(lambda: http.get(gate_b + "/api/v1/balances", headers=auth, timeout=10).status_code == 401,
               timeout_s=10, interval_s=0.2, what="the logged-out token refused at gate B")
    assert http.get(gate_b + "/api/v1/balances", headers=auth, timeout=10).json()["code"] == "invalid_token"
