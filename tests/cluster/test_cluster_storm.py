"""A cluster of real processes: 2 gates, 2 transrv hosts sharing the 4 shards through etcd membership (2
each), and the singletons, on MariaDB, Redis and etcd. Clients send transfers (about half cross-shard, so
across hosts) through both gates and retry every unanswered one with the same Idempotency-Key; one transrv
host is SIGKILLed mid-storm, its lease lapses, and the other host takes its shards. Every acknowledged
transfer is present exactly once, the balances are exact, and `wallet audit` passes."""

from __future__ import annotations

import random
import subprocess

import pytest
import requests

from storage.models import Operation
from tests.cluster.support import SINGLETONS, RoleProcess, wait_for_spread
from tests.conftest import ETCD_URL, make_config
from tests.helpers import wait_until
from tests.process.support import WALLET, eth_balance, login, prepare
from tests.process.test_crash_http import FUNDS, Client, _expected_balances
from web.idempotency import op_id
from web.transfers import OP_PREFIX

USERS = [f"user{i}" for i in range(8)]  # two per shard
TRANSFERS_PER_CLIENT = 25


@pytest.mark.slow
def test_sigkill_of_a_transrv_host_under_a_storm(mysql_url, redis_prefix, etcd_prefix, tmp_path):
    config = make_config(mysql_url, redis_prefix, etcd_url=ETCD_URL, etcd_prefix=etcd_prefix, etcd_lease_s=2)
    accounts = prepare(config, {name: FUNDS for name in USERS})
    rng = random.Random(13)
    plans = {name: [(f"{name}-{n}", rng.choice([u for u in USERS if u != name]), rng.randrange(1, 10**6))
                    for n in range(TRANSFERS_PER_CLIENT)] for name in USERS}
    cross = sum(accounts[name][1] != accounts[to][1] for name in USERS for _, to, _ in plans[name])
    assert cross > len(USERS) * TRANSFERS_PER_CLIENT // 2  # most land on another shard (often another host)
    single = RoleProcess(config, tmp_path / "single.log", SINGLETONS)
    host_a = RoleProcess(config, tmp_path / "a.log", "transrv")
    host_b = RoleProcess(config, tmp_path / "b.log", "transrv")
    gates = [RoleProcess(config, tmp_path / f"gate{n}.log", "gate") for n in range(2)]
    procs = [single, host_a, host_b, *gates]
    try:
        for proc in procs:
            proc.start()
        for gate in gates:
            gate.wait_ready()
        held = wait_for_spread(gates[0], {host_a, host_b})
        clients = [Client(gates[n % 2].url, name, plans[name]) for n, name in enumerate(USERS)]
        for client in clients:
            client.start()
        _wait_for_answers(clients, 40, host_b)
        host_b.kill()
        answered_at_kill = sum(len(c.answered) for c in clients)
        # B's lease lapses; A takes B's shards (their locks died with B's connections).
        assert held[host_b.process_id()] == (1, 3) or held[host_b.process_id()] == (0, 2)
        wait_for_spread(gates[0], {host_a})
        for client in clients:
            client.join(timeout=90)
        assert [c.error for c in clients if c.error] == []
        # The kill came mid-storm. What it cut off was retried by the clients, claimed by A from the dead host's
        # pending entries, or (entries B never read) simply read by A once it took the shards within the callers'
        # deadline: CI saw runs with no retry and no claim, so none of those is asserted, only the outcome below.
        assert answered_at_kill < len(USERS) * TRANSFERS_PER_CLIENT

        expected = _expected_balances(plans)
        http = requests.Session()
        tokens = {name: login(http, gates[0].url, name) for name in USERS}

        def balances() -> dict[str, int]:
            return {name: eth_balance(http, gates[1].url, tokens[name])[0] for name in USERS}

        wait_until(lambda: balances() == expected, timeout_s=30, interval_s=0.1, what="the planned balances",
                   detail=lambda: f"balances: {balances()}")
        for proc in (*gates, host_a, single):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()

    want = {op_id(OP_PREFIX, accounts[name][0], key) for name in USERS for key, _, _ in plans[name]}
    got = [row.op_id for row in Operation.select(Operation.op_id).where(Operation.kind == "transfer")]
    assert sorted(got) == sorted(want)
    for client in clients:
        assert all(tid == op_id(OP_PREFIX, accounts[client.user][0], key) for key, tid in client.answered.items())
    audit = subprocess.run([WALLET, "audit"], env=gates[0].env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _wait_for_answers(clients: list[Client], count: int, proc: RoleProcess) -> None:
    def answered() -> bool:
        assert any(c.is_alive() for c in clients), [c.error for c in clients]
        return sum(len(c.answered) for c in clients) >= count
    wait_until(answered, timeout_s=60, interval_s=0.01, what=f"{count} transfers answered", detail=proc.log_tail)
