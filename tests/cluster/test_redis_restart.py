"""Redis restarted mid-load with `SHUTDOWN NOSAVE`, on a private redis-server (every stream, consumer group,
cached binding and session mark is gone): 2 gates, 2 transrv hosts (shards 0,1 and 2,3, so cross-shard
credits cross Redis) and the singletons, under clients that retry every unanswered transfer with the same
Idempotency-Key. While Redis is down a gate answers 503; once it is back the hosts recreate their consumer
groups, the outbox delivers what the lost streams carried, every acknowledged transfer is present once, the
balances are exact, a gate started afterwards rebuilds the binding cache in Redis from the database, the
allocator still binds a new account to the shard with the fewest, and `wallet audit` passes."""

from __future__ import annotations

import random
import subprocess

import pytest
import redis
import requests

from actors.transport import StreamNames
from core.ports import free_port
from storage.models import Account, Operation, Outbox
from tests.cluster.support import SINGLETONS, RoleProcess
from tests.conftest import make_config
from tests.helpers import wait_until
from tests.process.support import PAY_PASSWORD, WALLET, eth_balance, login, prepare
from tests.process.test_crash_http import FUNDS, Client, _expected_balances
from web.idempotency import op_id
from web.transfers import OP_PREFIX

USERS = [f"user{i}" for i in range(8)]  # two per shard
TRANSFERS_PER_CLIENT = 20


class RedisServer:
    """A private redis-server on a free loopback port that keeps nothing on disk (a restart starts empty)."""

    def __init__(self, log_path) -> None:  # noqa: ANN001 - a Path
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(self._answers, timeout_s=30, interval_s=0.05, what="redis-server up",
                   ignore=(redis.RedisError,))
        return self

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
        return redis.Redis.from_url(self.url, socket_timeout=1).ping()

    def shutdown_nosave(self) -> None:
        try:
            redis.Redis.from_url(self.url, socket_timeout=5).execute_command("SHUTDOWN", "NOSAVE")
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.mark.slow
def test_redis_shutdown_nosave_mid_load(mysql_url, redis_prefix, tmp_path):
    server = RedisServer(tmp_path / "redis.log").start()
    config = make_config(mysql_url, redis_prefix, redis_url=server.url)
    accounts = prepare(config, {name: FUNDS for name in USERS})
    rng = random.Random(29)
    plans = {name: [(f"{name}-{n}", rng.choice([u for u in USERS if u != name]), rng.randrange(1, 10**6))
                    for n in range(TRANSFERS_PER_CLIENT)] for name in USERS}
    single = RoleProcess(config, tmp_path / "single.log", SINGLETONS)
    hosts = [RoleProcess(config, tmp_path / "a.log", "transrv", "0,1"),
             RoleProcess(config, tmp_path / "b.log", "transrv", "2,3")]
    gates = [RoleProcess(config, tmp_path / f"gate{n}.log", "gate") for n in range(2)]
    procs = [single, *hosts, *gates]
    try:
        for proc in procs:
            proc.start()
        for gate in gates:
            gate.wait_ready()
        http = requests.Session()
        token = login(http, gates[0].url, "user0")  # before: logins count against a rate limit kept in Redis
        clients = [Client(gates[n % 2].url, name, plans[name]) for n, name in enumerate(USERS)]
        for client in clients:
            client.start()
        wait_until(lambda: sum(len(c.answered) for c in clients) >= 40, timeout_s=60, interval_s=0.01,
                   what="40 transfers answered", detail=gates[0].log_tail)
        server.shutdown_nosave()
        answered_at_shutdown = sum(len(c.answered) for c in clients)
        assert answered_at_shutdown < len(USERS) * TRANSFERS_PER_CLIENT  # the shutdown came mid-load
        probe = http.post(gates[0].url + "/api/v1/transfers", timeout=30, json={
            "to_username": "user5", "asset": "ETH", "amount": "7", "pay_password": PAY_PASSWORD},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "probe"})
        assert probe.status_code == 503 and probe.json()["code"], probe.text  # problem details, not a 500
        assert requests.get(gates[1].ops_url + "/readyz", timeout=30).status_code == 503

        server.start()  # empty: no stream, no consumer group, no cached binding
        for client in clients:
            client.join(timeout=120)
        assert [c.error for c in clients if c.error] == []
        wait_until(lambda: _probe(http, gates[1], token) == 201, timeout_s=60, interval_s=0.2,
                   what="the probe transfer answered once Redis is back")
        plans["user0"].append(("probe", "user5", 7))

        expected = _expected_balances(plans)
        tokens = {name: login(http, gates[0].url, name) for name in USERS}

        def balances() -> dict[str, int]:
            return {name: eth_balance(http, gates[1].url, tokens[name])[0] for name in USERS}

        wait_until(lambda: balances() == expected, timeout_s=60, interval_s=0.2, what="the planned balances",
                   detail=lambda: f"balances: {balances()}")
        wait_until(lambda: not Outbox.select().where(Outbox.delivered_at.is_null()).exists(), timeout_s=60,
                   what="every cross-shard credit delivered (the outbox completes)")
        client = redis.Redis.from_url(server.url)
        names = StreamNames(redis_prefix)
        for shard in range(4):  # the hosts recreated their consumer groups on the new, empty server
            assert client.xinfo_groups(names.inbox(f"shard-{shard}")), shard
        for gate in gates:
            gate.wait_ready()

        shard_key, name_key = f"{redis_prefix}:account_shard", f"{redis_prefix}:username"
        client.delete(shard_key, name_key)  # the running gates filled the cache again; a new gate rebuilds it
        late_gate = RoleProcess(config, tmp_path / "gate-late.log", "gate")
        procs.append(late_gate.start())
        late_gate.wait_ready()
        late_token = login(http, late_gate.url, "user1")
        assert eth_balance(http, late_gate.url, late_token)[0] == expected["user1"]
        moved = _transfer(http, late_gate, late_token, "user6", "late", 11)
        assert moved.status_code == 201, moved.text
        for name in ("user1", "user6"):  # rebuilt from the database by the gate's lookups (by id, by name)
            account_id, shard = accounts[name]
            assert client.hget(shard_key, str(account_id)) == str(shard).encode()
            assert client.hget(name_key, name) == f"{account_id}:{shard}".encode()
        joined = requests.post(late_gate.url + "/api/v1/accounts", timeout=15, json={
            "username": "newcomer", "password": "newcomer-password", "pay_password": PAY_PASSWORD})
        assert joined.status_code == 201, joined.text
        # Every shard had two accounts: the tie goes to the lowest shard; then shard 0 has the most.
        assert joined.json()["shard"] == 0
        assert [Account.select().where((Account.kind == "user") & (Account.shard == s)).count()
                for s in range(4)] == [3, 2, 2, 2]
        for proc in (late_gate, *gates, *hosts, single):
            assert proc.terminate() == 0, proc.log_tail()
    finally:
        for proc in procs:
            proc.ensure_stopped()
        server.stop()

    want = {op_id(OP_PREFIX, accounts[name][0], key) for name in USERS for key, _, _ in plans[name]}
    want.add(op_id(OP_PREFIX, accounts["user1"][0], "late"))
    got = [row.op_id for row in Operation.select(Operation.op_id).where(Operation.kind == "transfer")]
    assert sorted(got) == sorted(want)
    audit = subprocess.run([WALLET, "audit"], env=gates[0].env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _transfer(http, gate, token, to, key, amount) -> requests.Response:  # noqa: ANN001
    return http.post(gate.url + "/api/v1/transfers", timeout=30, json={
        "to_username": to, "asset": "ETH", "amount": str(amount), "pay_password": PAY_PASSWORD},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})


def _probe(http, gate, token) -> int:  # noqa: ANN001
    return _transfer(http, gate, token, "user5", "probe", 7).status_code
