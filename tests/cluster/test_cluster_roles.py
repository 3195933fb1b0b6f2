"""A small cluster of real processes (gate, transrv host, singletons) on MariaDB and Redis: the API works
across processes, each process says what it holds, and a gate's /readyz pings every shard through Redis."""

from __future__ import annotations

import json

import requests

from tests.cluster.support import SINGLETONS, RoleProcess
from tests.conftest import make_config
from tests.process.support import PAY_PASSWORD, eth_balance, login, prepare


def test_gate_transrv_and_singletons_serve_the_api(mysql_url, redis_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix)
    accounts = prepare(config, {"alice": 10**18, "bob": 0, "carol": 0, "dave": 0})
    procs = [RoleProcess(config, tmp_path / "single.log", SINGLETONS),
             RoleProcess(config, tmp_path / "transrv.log", "transrv", "0,1,2,3"),
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
        for proc in reversed(procs):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()
